"""Never a silent wrong number: outputs that are not one row per sample, modules that couple
samples, dropout across the passes of one call, a method that cannot run on a model.

Numbers are checked against torch.autograd.functional.jacobian in float64; where samples are
coupled, the oracle is the per-sample block of the whole batch's Jacobian.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from jacobian_penalty import (
    METHODS,
    SampleCouplingError,
    check_samples_independent,
    jacobian_norms,
    jacobian_penalty,
    per_sample_jacobian,
)

DOUBLE = torch.float64


def mlp(inputs: int = 6, outputs: int = 5, *extra: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 16), nn.Tanh(), *extra, nn.Linear(16, outputs)).to(DOUBLE)


def block_diagonal_squared_norms(f, x: torch.Tensor) -> torch.Tensor:
    """||d f(x)_b / d x_b||_F^2 from the Jacobian of the whole batch, (B, C, B, D) -> (B,)."""
    full = torch.autograd.functional.jacobian(f, x)
    batch = x.shape[0]
    full = full.reshape(batch, -1, batch, x[0].numel())
    return torch.stack([full[b, :, b, :].pow(2).sum() for b in range(batch)])


# --- outputs that are not one tensor with one row per sample ----------------------------------


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize(
    "wrap, words",
    [
        (lambda m: (lambda x: m(x).mean(0, keepdim=True)), "one row per sample"),
        (lambda m: (lambda x: m(x).T), "one row per sample"),
        (lambda m: (lambda x: (m(x), m(x))), "lambda x: model(x)[0]"),
        (lambda m: (lambda x: {"logits": m(x)}), "model(x)['logits']"),
        (lambda m: (lambda x: m(x).argmax(1)), "floating point"),
    ],
    ids=["mean-over-batch", "transposed", "tuple", "dict", "integer"],
)
def test_output_that_is_not_one_row_per_sample_is_refused(method, wrap, words):
    model = mlp()
    f = wrap(model)
    x = torch.randn(4, 6, dtype=DOUBLE)
    with pytest.raises(ValueError) as caught:
        jacobian_penalty(f, x, method=method)
    assert words in str(caught.value)


def test_empty_batch_is_refused_in_plain_words():
    with pytest.raises(ValueError, match="empty batch"):
        jacobian_penalty(mlp(), torch.zeros(0, 6, dtype=DOUBLE))
    with pytest.raises(ValueError, match="empty batch"):
        jacobian_norms(mlp(), torch.zeros(0, 6, dtype=DOUBLE))


def test_transposed_output_of_a_square_batch_is_caught_by_the_independence_check():
    # B == C: the shape alone cannot tell; the behavioural check can.
    model = mlp(6, 4)
    x = torch.randn(4, 6, dtype=DOUBLE)
    with pytest.raises(SampleCouplingError, match="mixes the samples"):
        check_samples_independent(lambda t: model(t).T, x)


# --- modules that couple samples ---------------------------------------------------------------


def batchnorm_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 5)).to(DOUBLE)


@pytest.mark.parametrize("method", list(METHODS))
def test_batchnorm_in_training_mode_raises_naming_the_module_and_the_fixes(method):
    model = batchnorm_model().train()
    x = torch.randn(32, 6, dtype=DOUBLE)
    with pytest.raises(SampleCouplingError) as caught:
        jacobian_penalty(model, x, method=method)
    message = str(caught.value)
    for words in ("BatchNorm1d (1)", "model.eval()", "GroupNorm", "replace_all_batch_norm_modules_", "coupling='warn'"):
        assert words in message


def test_batchnorm_in_eval_mode_is_per_sample_and_matches_the_oracle():
    model = batchnorm_model()
    x = torch.randn(32, 6, dtype=DOUBLE)
    model.train()
    model(x)  # running statistics that differ from the initial ones
    model.eval()
    expected = block_diagonal_squared_norms(model, x).mean()
    _, penalty = jacobian_penalty(model, x, method="exact")
    torch.testing.assert_close(penalty, expected, rtol=1e-10, atol=0)
    check_samples_independent(model, x)


def test_what_the_penalty_would_measure_under_batchnorm_coupling_is_far_from_per_sample():
    """Why raising is the default, measured: with coupling='warn' the methods measure other things.

    From the whole batch's Jacobian K = d f(X) / d X, (B, C, B, D): the per-sample value uses the
    diagonal blocks K[b, :, b, :]; one batched backward of one-hot rows sees, for input b, the
    sum over b' of K[b', c, b, :] (rows mixed across samples); a projection estimates the sum of
    squares of every block in column b (cross-sample terms added).
    """
    model = batchnorm_model().train()
    x = torch.randn(32, 6, dtype=DOUBLE)
    full = torch.autograd.functional.jacobian(model, x).reshape(32, 5, 32, 6)
    per_sample = torch.stack([full[b, :, b, :].pow(2).sum() for b in range(32)]).mean()
    mixed_rows = full.sum(dim=0).pow(2).sum() / 32  # sum_b' K[b', c, b, :], squared, batch mean
    all_blocks = full.pow(2).sum() / 32
    with pytest.warns(UserWarning, match="BatchNorm1d"):
        _, exact = jacobian_penalty(model, x, method="exact", coupling="warn")
    torch.testing.assert_close(exact, mixed_rows, rtol=1e-10, atol=0)
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        draws = torch.stack([
            jacobian_penalty(model, x, method="projection", coupling="warn", generator=gen)[1] for _ in range(400)
        ])
    standard_error = draws.std() / 400**0.5
    assert abs(draws.mean() - all_blocks) < 4.5 * standard_error
    # exact: 0.224 against 0.564 in the model; off by far more than rounding here too.
    assert abs(exact / per_sample - 1) > 0.2
    assert all_blocks / per_sample - 1 > 0.01  # cross-sample terms: squares, only ever added


def test_syncbatchnorm_is_caught_before_it_runs():
    model = nn.Sequential(nn.Linear(6, 8), nn.SyncBatchNorm(8), nn.Linear(8, 3)).to(DOUBLE).train()
    with pytest.raises(SampleCouplingError, match="SyncBatchNorm"):
        jacobian_penalty(model, torch.randn(4, 6, dtype=DOUBLE))


def test_batch_first_false_attention_fed_batch_first_data_raises():
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0).to(DOUBLE)  # batch_first=False (default)
    x = torch.randn(3, 5, 8, dtype=DOUBLE)  # (B, T, E): the layer would attend across the 3 samples
    with pytest.raises(SampleCouplingError, match="batch_first=False"):
        jacobian_penalty(layer, x)
    with pytest.raises(SampleCouplingError, match="mixes the samples"):
        check_samples_independent(layer, x)


def test_a_cross_sample_term_is_found_by_behaviour_and_buffers_are_restored():
    model = batchnorm_model().train()
    before = [b.clone() for b in model.buffers()]
    x = torch.randn(8, 6, dtype=DOUBLE)
    with pytest.raises(SampleCouplingError, match="changing sample 3 moved the outputs of 7"):
        check_samples_independent(model, x, sample=3)
    for saved, now in zip(before, model.buffers(), strict=True):
        assert torch.equal(saved, now)
    plain = mlp()
    with pytest.raises(SampleCouplingError):
        check_samples_independent(lambda t: plain(t) + plain(t).mean(0), x)
    check_samples_independent(plain, x)


# --- randomness inside f -------------------------------------------------------------------------


def dropout_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Dropout(0.5), nn.Linear(64, 5)).to(DOUBLE).train()


def oracle_with_mask(model, x, seed):
    """||J||_F^2 per sample under the dropout mask that seed gives the first forward pass."""
    torch.manual_seed(seed)
    return block_diagonal_squared_norms(model, x)


def test_finite_differences_see_one_dropout_mask():
    model = dropout_model()
    x = torch.randn(4, 6, dtype=DOUBLE)
    expected = oracle_with_mask(model, x, seed=5)  # (B,)
    # Reproduce fd's directions: drawn from `gen` after the first forward pass.
    n, step = 16, 1e-7
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(5)
    _, penalty = jacobian_penalty(model, x, method="fd", num_projections=n, fd_step=step, generator=gen, probes="iid")
    torch.manual_seed(5)
    full = torch.autograd.functional.jacobian(model, x).reshape(4, 5, 4, 6)
    jac = torch.stack([full[b, :, b, :] for b in range(4)])  # (B, C, D), the mask of seed 5
    gen = torch.Generator().manual_seed(3)
    estimates = []
    for d in torch.randn((n, *x.shape), generator=gen, dtype=DOUBLE):  # one draw for all n directions
        d = d / d.norm(dim=1, keepdim=True)
        estimates.append(6 * torch.einsum("bcd,bd->bc", jac, d).pow(2).sum(1))
    torch.testing.assert_close(penalty, torch.stack(estimates).mean(), rtol=1e-5, atol=0)
    assert expected.mean() > 0  # and the mask is not all zeros


def test_dropout_mask_of_exact_and_jvp_and_the_random_stream_after_the_call():
    model = dropout_model()
    x = torch.randn(4, 2, dtype=DOUBLE)
    model[0] = nn.Linear(2, 64).to(DOUBLE)  # D = 2 < C = 5: exact goes by columns (forward mode)
    expected = oracle_with_mask(model, x, seed=9).mean()
    torch.manual_seed(9)
    _, exact = jacobian_penalty(model, x, method="exact")
    after_exact = torch.rand(1)
    torch.testing.assert_close(exact, expected, rtol=1e-10, atol=0)
    torch.manual_seed(9)
    model(x)  # one plain forward pass draws one mask
    assert torch.equal(torch.rand(1), after_exact)  # the call left the stream as one pass would


def test_dropout_without_the_replay_would_be_far_off():
    """The failure the replay prevents: two masks give a number thousands of times too large."""
    model = dropout_model()
    x = torch.randn(4, 6, dtype=DOUBLE)
    exact = jacobian_penalty(model, x, method="exact")[1]
    y0 = model(x)
    d = torch.randn_like(x)
    d = d / d.norm(dim=1, keepdim=True)
    two_masks = 6 * ((model(x + 1e-2 * d) - y0) / 1e-2).pow(2).sum(1).mean()
    assert two_masks > 100 * exact


# --- a method that cannot run on f -------------------------------------------------------------


class RBF(nn.Module):
    """Distances to learned centres (torch.cdist has no forward-mode rule in PyTorch)."""

    def __init__(self) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.randn(7, 3, dtype=DOUBLE))

    def forward(self, x):
        return torch.exp(-torch.cdist(x, self.centres).pow(2))


def test_jvp_through_an_op_without_forward_rule_names_it_and_the_methods_that_work():
    model, x = RBF(), torch.randn(4, 3, dtype=DOUBLE)
    with pytest.raises(ValueError, match=r"_cdist_forward.*'projection' or 'exact'"):
        jacobian_penalty(model, x, method="jvp")
    # exact would go by columns here (D = 3 < C = 7) and falls back to rows
    expected = block_diagonal_squared_norms(model, x).mean()
    torch.testing.assert_close(jacobian_penalty(model, x, method="exact")[1], expected, rtol=1e-10, atol=0)


def test_exact_goes_by_columns_when_inputs_are_few_and_matches_the_oracle_and_its_gradient():
    torch.manual_seed(0)
    model = mlp(2, 300)
    x = torch.randn(5, 2, dtype=DOUBLE)
    params = list(model.parameters())

    def oracle(xx):
        return block_diagonal_squared_norms(model, xx).mean()

    full = torch.autograd.functional.jacobian(model, x, create_graph=True).reshape(5, 300, 5, 2)
    expected = torch.stack([full[b, :, b, :].pow(2).sum() for b in range(5)]).mean()
    expected_grads = torch.autograd.grad(expected, params[:-1])  # the last bias does not move J
    _, penalty = jacobian_penalty(model, x, method="exact")
    grads = torch.autograd.grad(penalty, params[:-1])
    torch.testing.assert_close(penalty, oracle(x), rtol=1e-10, atol=0)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-12)
    norms = jacobian_norms(model, x)
    torch.testing.assert_close(norms, block_diagonal_squared_norms(model, x).sqrt(), rtol=1e-10, atol=0)
    assert per_sample_jacobian(model, x).shape == (5, 300, 2)


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 1000])
@pytest.mark.parametrize("arch", ["mlp", "lstm"])
def test_exact_row_chunks_agree_with_the_oracle_in_value_and_gradient(chunk_size, arch):
    """One row per pass (autograd) and batched rows (torch.func.vmap over the VJP) alike."""
    torch.manual_seed(0)
    if arch == "mlp":
        model, x = mlp(6, 20), torch.randn(5, 6, dtype=DOUBLE)
        f = model
    else:
        model, x = nn.LSTM(3, 4, batch_first=True).to(DOUBLE), torch.randn(5, 3, 3, dtype=DOUBLE)

        def f(t):
            return model(t)[0].flatten(1)

    params = list(model.parameters())
    full = torch.autograd.functional.jacobian(f, x, create_graph=True).reshape(5, -1, 5, x[0].numel())
    expected = torch.stack([full[b, :, b, :].pow(2).sum() for b in range(5)]).mean()
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    y, penalty = jacobian_penalty(f, x, method="exact", chunk_size=chunk_size)
    grads = torch.autograd.grad(penalty, params, allow_unused=True)
    torch.testing.assert_close(penalty, expected, rtol=1e-10, atol=0)
    for g, e in zip(grads, expected_grads, strict=True):
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(y, f(x))  # and y still carries the graph for the caller's loss
    assert y.requires_grad


def test_no_parameter_grad_is_written_and_no_hook_or_flag_is_left_behind():
    model = nn.LSTM(3, 4, batch_first=True).to(DOUBLE)
    x = torch.randn(2, 5, 3, dtype=DOUBLE)
    sdpa_flags = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    for method in METHODS:
        jacobian_penalty(lambda t: model(t)[0], x, method=method)
    assert all(p.grad is None for p in model.parameters())
    assert torch.backends.mkldnn.enabled and torch.backends.cudnn.enabled
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()) == sdpa_flags
    from torch.nn.modules import module as module_hooks

    assert not module_hooks._global_forward_pre_hooks and not module_hooks._global_forward_hooks
