"""The penalty library against an oracle: torch.autograd.functional.jacobian in float64.

Random estimators are checked statistically: the mean of many draws must lie within a few
standard errors of the exact value, with the standard error taken from the draws themselves.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jacobian_penalty import METHODS, jacobian_norms, jacobian_penalty, per_sample_jacobian

BATCH = 3
Z_TOLERANCE = 4.5  # standard errors: a false alarm about once in 150,000 runs per check


class Reshaped(nn.Module):
    """A model whose output is not 2-D: (B, 3, 4), to check that non-batch dims are flattened."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(-1, 3, 4)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 5))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 7),
    )


CASES = {
    "mlp": (mlp, (BATCH, 6)),
    "cnn": (cnn, (BATCH, 1, 8, 8)),
    "reshaped": (Reshaped, (BATCH, 2, 4, 4)),
}


def make_case(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    factory, shape = CASES[name]
    torch.manual_seed(seed)
    model = factory().double()
    x = torch.randn(shape, dtype=torch.float64)
    return model, x


def oracle_squared_norms(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """||J_b||_F^2 per sample, one sample at a time with the functional jacobian."""
    rows = []
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda xb: model(xb.unsqueeze(0)), x[b], create_graph=create_graph
        )
        rows.append(jac.pow(2).sum())
    return torch.stack(rows)


def param_grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def draws(model, x, method, n, seed=0, **kwargs) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack(
        [
            jacobian_penalty(model, x, method=method, generator=gen, create_graph=False, **kwargs)[1]
            for _ in range(n)
        ]
    )


# --- exact --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_exact_matches_oracle(case):
    model, x = make_case(case)
    y, penalty = jacobian_penalty(model, x, method="exact")
    expected = oracle_squared_norms(model, x).mean()
    torch.testing.assert_close(penalty, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(y, model(x), rtol=0, atol=0)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 100])
def test_exact_chunked_equals_unchunked(chunk_size):
    model, x = make_case("reshaped")
    _, whole = jacobian_penalty(model, x, method="exact")
    _, chunked = jacobian_penalty(model, x, method="exact", chunk_size=chunk_size)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_exact_parameter_gradients_match_oracle(case):
    model, x = make_case(case)
    _, penalty = jacobian_penalty(model, x, method="exact")
    ours = param_grads(model, penalty)
    oracle = param_grads(model, oracle_squared_norms(model, x, create_graph=True).mean())
    assert any(g.abs().sum() > 0 for g in oracle)
    for got, want in zip(ours, oracle, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_norm_helpers_match_oracle():
    model, x = make_case("cnn")
    torch.testing.assert_close(jacobian_norms(model, x), oracle_squared_norms(model, x).sqrt())
    jac = per_sample_jacobian(model, x)  # (B, C, 1, 8, 8)
    assert jac.shape == (BATCH, 7, 1, 8, 8)
    for b in range(BATCH):
        want = torch.autograd.functional.jacobian(lambda xb: model(xb.unsqueeze(0))[0], x[b])
        torch.testing.assert_close(jac[b], want)
    assert not jac.requires_grad


# --- random estimators: unbiased, reproducible ---------------------------------------------------


@pytest.mark.parametrize("method", ["projection", "jvp"])
@pytest.mark.parametrize("case", ["mlp", "reshaped"])
def test_random_estimators_are_unbiased(method, case):
    model, x = make_case(case)
    exact = oracle_squared_norms(model, x).mean()
    samples = draws(model, x, method, n=3000)
    standard_error = samples.std() / math.sqrt(len(samples))
    z = (samples.mean() - exact).abs() / standard_error
    assert z < Z_TOLERANCE, f"{method}: mean {samples.mean():.5f} vs exact {exact:.5f}, z = {z:.1f}"


def test_projection_variance_falls_with_projections():
    model, x = make_case("mlp")
    one = draws(model, x, "projection", n=800).var()
    eight = draws(model, x, "projection", n=800, num_projections=8, probes="iid").var()
    # Averaging 8 independent projections divides the variance by 8; allow sampling noise.
    assert 4 < one / eight < 16


def test_projection_relative_variance_below_two():
    # Hoffman et al. 2019: one projection's relative variance Var/E^2 is below 2 (for a batch
    # mean it is lower still).
    model, x = make_case("mlp")
    exact = oracle_squared_norms(model, x).mean()
    assert draws(model, x, "projection", n=2000).var() / exact**2 < 2


def test_seeded_generator_reproduces_and_seeds_differ():
    model, x = make_case("mlp")
    for method in ["projection", "jvp", "fd"]:
        first, again, other = (draws(model, x, method, 3, seed=s) for s in (1, 1, 2))
        assert torch.equal(first, again), method
        assert not torch.equal(first, other), method


# --- finite differences ------------------------------------------------------------------------


def test_fd_bias_shrinks_with_step():
    model, x = make_case("mlp")
    # The same directions (same seed) at every step: the differences are the O(h) bias alone.
    def at(step):
        return draws(model, x, "fd", 1, seed=3, fd_step=step)[0]

    limit = at(1e-7)
    errors = [(at(h) - limit).abs().item() for h in (1e-1, 1e-2, 1e-3)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] < 0.3 * errors[0] and errors[2] < 0.3 * errors[1]  # about linear in h


def test_fd_small_step_is_unbiased():
    model, x = make_case("mlp")
    exact = oracle_squared_norms(model, x).mean()
    samples = draws(model, x, "fd", n=3000, fd_step=1e-6)
    z = (samples.mean() - exact).abs() / (samples.std() / math.sqrt(len(samples)))
    assert z < Z_TOLERANCE


# --- gradients and side effects ----------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_never_writes_parameter_grad_and_is_differentiable(method):
    model, x = make_case("cnn")
    y, penalty = jacobian_penalty(model, x, method=method, generator=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in model.parameters())
    assert x.grad is None and not x.requires_grad
    grads = param_grads(model, penalty)
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    # y keeps its graph: the caller's cross-entropy backpropagates through it.
    ce = F.cross_entropy(y, torch.zeros(BATCH, dtype=torch.long))
    assert sum(g.abs().sum() for g in param_grads(model, ce)) > 0
    torch.testing.assert_close(y, model(x))


@pytest.mark.parametrize("method", list(METHODS))
def test_create_graph_false_gives_a_plain_number(method):
    model, x = make_case("mlp")
    _, penalty = jacobian_penalty(model, x, method=method, create_graph=False)
    assert not penalty.requires_grad and penalty.dim() == 0


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_follows_dtype_of_input(method, dtype):
    torch.manual_seed(0)
    model = mlp().to(dtype)
    x = torch.randn(4, 6, dtype=dtype)
    y, penalty = jacobian_penalty(model, x, method=method)
    assert y.dtype == dtype and penalty.dtype == dtype and penalty.device == x.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("method", list(METHODS))
def test_runs_on_the_device_of_the_input(method):
    model, x = make_case("cnn")
    model, x = model.cuda(), x.cuda()
    _, penalty = jacobian_penalty(model, x, method=method, generator=torch.Generator().manual_seed(0))
    assert penalty.is_cuda
    if method == "exact":
        torch.testing.assert_close(penalty.cpu(), oracle_squared_norms(model.cpu(), x.cpu()).mean())


def test_input_that_requires_grad_keeps_its_graph():
    model, x = make_case("mlp")
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    _, penalty = jacobian_penalty(model, x * scale, method="exact")
    (grad,) = torch.autograd.grad(penalty, scale)
    assert grad.abs() > 0


# --- the forum thread's mistake, made visible ----------------------------------------------------


def thread_penalty(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forum thread's code: backward of a ones vector, then x.grad.data.norm(2)."""
    x = x.clone().requires_grad_(True)
    y = model(x)
    y.backward(torch.ones_like(y), retain_graph=True)
    return x.grad, x.grad.data.norm(2)


def test_thread_penalty_has_no_gradient_and_pollutes_grad_ours_matches_oracle():
    model, x = make_case("mlp")
    column_sums, theirs = thread_penalty(model, x)
    # .data detached it: the penalty cannot move the parameters.
    assert not theirs.requires_grad and theirs.grad_fn is None
    # ... and backward() has written junk into every parameter's .grad.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # A ones vector gives J^T 1 (column sums), not the norm.
    jac = torch.stack(
        [torch.autograd.functional.jacobian(lambda xb: model(xb.unsqueeze(0))[0], x[b]) for b in range(BATCH)]
    )  # (B, C, D)
    torch.testing.assert_close(column_sums, jac.sum(dim=1))
    assert not torch.isclose(theirs.pow(2), jac.pow(2).sum(), rtol=0.05)

    model.zero_grad(set_to_none=True)
    _, ours = jacobian_penalty(model, x, method="exact")
    oracle = param_grads(model, oracle_squared_norms(model, x, create_graph=True).mean())
    for got, want in zip(param_grads(model, ours), oracle, strict=True):
        torch.testing.assert_close(got, want)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "x", "message"),
    [
        ({"method": "nope"}, torch.zeros(2, 6), "Unknown method 'nope'"),
        ({"num_projections": 0}, torch.zeros(2, 6), "num_projections must be"),
        ({"num_projections": 1.5}, torch.zeros(2, 6), "num_projections must be"),
        ({"method": "exact", "chunk_size": 0}, torch.zeros(2, 6), "chunk_size must be"),
        ({"method": "fd", "fd_step": float("nan")}, torch.zeros(2, 6), "fd_step must be"),
        ({}, torch.zeros(6), "must be batched"),
        ({}, torch.zeros(2, 6, dtype=torch.long), "must be floating point"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, x, message):
    with pytest.raises(ValueError, match=message):
        jacobian_penalty(mlp(), x, **kwargs)
