"""The first call's behaviour check, forward mode and layer norm, autocast, compile, the stream.

Oracles: per-sample Jacobians of the whole-batch function (torch.autograd.functional.jacobian,
float64) and central finite differences.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jacobian_penalty import SampleCouplingError, jacobian_penalty

DOUBLE = torch.float64
METHODS = ("exact", "projection", "jvp", "fd", "auto")


def per_sample_penalty(f, x):
    batch = x.shape[0]
    jac = torch.autograd.functional.jacobian(f, x).reshape(batch, -1, batch, x[0].numel())
    return torch.stack([jac[b, :, b, :].pow(2).sum() for b in range(batch)]).mean()


@pytest.mark.parametrize("method", METHODS)
def test_coupling_by_ordinary_ops_is_refused_by_behaviour(method):
    torch.manual_seed(0)
    lin = nn.Linear(5, 4).to(DOUBLE)
    x = torch.randn(6, 5, dtype=DOUBLE)
    for f in (lambda z: lin(z) - lin(z).mean(0), lambda z: F.batch_norm(lin(z), None, None, training=True)):
        with pytest.raises(SampleCouplingError, match="mixes the samples.*check_independence=False"):
            jacobian_penalty(f, x, method=method)


def test_check_independence_false_turns_the_check_off_and_the_number_is_then_wrong():
    torch.manual_seed(0)
    lin = nn.Linear(5, 4).to(DOUBLE)
    x = torch.randn(6, 5, dtype=DOUBLE)

    def f(z):
        return lin(z) - lin(z).mean(0)

    _, value = jacobian_penalty(f, x, method="exact", check_independence=False)
    assert abs(value.item() - per_sample_penalty(f, x).item()) > 0.1 * per_sample_penalty(f, x).item()


class Seq(nn.Module):
    def __init__(self, layer, attention):
        super().__init__()
        self.layer, self.attention = layer, attention

    def forward(self, x):
        out = self.layer(x, x, x, need_weights=False) if self.attention else self.layer(x)
        return out[0].flatten(1)


@pytest.mark.parametrize("layer, verb", [(nn.MultiheadAttention(4, 2), "attends"), (nn.LSTM(4, 3), "recurs")])
def test_batch_first_false_is_caught_when_the_sequence_is_as_long_as_the_batch(layer, verb):
    model = Seq(layer.to(DOUBLE), isinstance(layer, nn.MultiheadAttention))
    x = torch.randn(4, 4, 4, dtype=DOUBLE)  # (B, L, E) with L = B: no shape test can tell
    with pytest.raises(SampleCouplingError, match=f"batch_first=False.*{verb}") as error:
        jacobian_penalty(model, x)
    assert "model.eval()" not in str(error.value) and "BatchNorm" not in str(error.value)


def test_a_correct_sequence_first_layout_is_not_refused_when_the_sequence_is_as_long_as_the_batch():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(4, 2).to(DOUBLE)

    def f(x):  # (B, L, E) -> (L, B * P, E) with P = 1 here, the layer's own layout
        h = x.transpose(0, 1)
        return attn(h, h, h, need_weights=False)[0].transpose(0, 1).flatten(1)

    x = torch.randn(3, 3, 4, dtype=DOUBLE)
    _, value = jacobian_penalty(f, x, method="exact")
    torch.testing.assert_close(value, per_sample_penalty(f, x), rtol=1e-8, atol=0)


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_the_check_runs_once_per_module_and_again_when_a_mode_changes():
    model = Counting().to(DOUBLE)
    x = torch.randn(8, 5, dtype=DOUBLE)
    jacobian_penalty(model, x)
    assert model.calls == 1 + 3  # the penalty's pass and the check's three
    jacobian_penalty(model, x)
    assert model.calls == 5  # cached
    model.net[1].eval()
    jacobian_penalty(model, x)
    assert model.calls == 9  # a training flag changed: checked again
    jacobian_penalty(model, x, check_independence=False)
    assert model.calls == 10


def test_the_check_leaves_the_random_stream_and_the_buffers_alone():
    model = nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.5), nn.Linear(6, 3)).to(DOUBLE)
    x = torch.randn(8, 5, dtype=DOUBLE)
    torch.manual_seed(3)
    model(x)
    after_plain = torch.rand(3)
    torch.manual_seed(3)
    jacobian_penalty(model, x, generator=torch.Generator().manual_seed(0))  # first call: the check runs
    assert torch.equal(torch.rand(3), after_plain)


# --- forward mode through layer norm ---------------------------------------------------------


def _directional_derivatives(model, x, u):
    """(by backpropagating through torch.func.jvp, by central differences) of sum ||J u||^2."""
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]

    def value():
        return torch.func.jvp(model, (x,), (u,))[1].pow(2).sum()

    grads = torch.autograd.grad(value(), params, allow_unused=True)
    through_jvp = sum((g * d).sum() for g, d in zip(grads, v, strict=True) if g is not None).item()
    h = 1e-5
    with torch.no_grad():
        for p, d in zip(params, v, strict=True):
            p.add_(h * d)
        plus = value().item()
        for p, d in zip(params, v, strict=True):
            p.sub_(2 * h * d)
        minus = value().item()
        for p, d in zip(params, v, strict=True):
            p.add_(h * d)
    return through_jvp, (plus - minus) / (2 * h)


def test_pytorch_still_differentiates_layer_norm_forward_mode_wrongly():
    """The canary: when this fails, PyTorch has fixed the bug and the layer-norm guard
    (jacobian_penalty.forward_mode) can go. GroupNorm, the control, is right."""
    torch.manual_seed(0)
    x, u = torch.randn(3, 6, dtype=DOUBLE), torch.randn(3, 6, dtype=DOUBLE)
    broken = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 5)).to(DOUBLE)
    through_jvp, fd = _directional_derivatives(broken, x, u)
    assert abs(through_jvp - fd) > 0.1 * abs(fd)
    control = nn.Sequential(nn.Linear(6, 8), nn.Unflatten(1, (8, 1)), nn.GroupNorm(2, 8), nn.Flatten(),
                            nn.Linear(8, 5)).to(DOUBLE)
    through_jvp, fd = _directional_derivatives(control, x, u)
    assert abs(through_jvp - fd) < 1e-6 * max(1.0, abs(fd))
    # Instance norm, guarded for the same reason, is still broken too.
    torch.manual_seed(0)
    x, u = torch.randn(3, 6, dtype=DOUBLE), torch.randn(3, 6, dtype=DOUBLE)
    instance = nn.Sequential(nn.Linear(6, 8), nn.Unflatten(1, (2, 4)), nn.InstanceNorm1d(2), nn.Flatten(),
                             nn.Linear(8, 5)).to(DOUBLE)
    through_jvp, fd = _directional_derivatives(instance, x, u)
    assert abs(through_jvp - fd) > 0.1 * abs(fd)


def test_jvp_refuses_layer_norm_naming_it_and_exact_goes_by_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.LayerNorm(8), nn.Linear(8, 10)).to(DOUBLE)
    x = torch.randn(3, 2, dtype=DOUBLE)
    with pytest.raises(ValueError, match=r"LayerNorm \(1\).*'projection'.*'exact'.*'fd'"):
        jacobian_penalty(model, x, method="jvp")
    _, _, info = jacobian_penalty(model, x, method="exact", explain=True)
    assert info.mode == "rows" and "unsafe" in info.reason  # D = 2 < C = 10, yet rows


@pytest.mark.parametrize(("batch", "check"), [(3, False), (1, True), (1, False)])
def test_a_functional_layer_norm_meets_no_forward_mode_even_without_the_behaviour_check(batch, check):
    """The behaviour check (off, or skipped for one sample) is not what keeps forward mode away from
    F.layer_norm: a recorded pass of f is."""
    torch.manual_seed(0)
    first, last = nn.Linear(2, 8).to(DOUBLE), nn.Linear(8, 10).to(DOUBLE)

    def f(z):
        return last(F.layer_norm(first(z), (8,)))

    x = torch.randn(batch, 2, dtype=DOUBLE)
    with pytest.raises(ValueError, match=r"torch\.nn\.functional\.layer_norm.*'projection'"):
        jacobian_penalty(f, x, method="jvp", check_independence=check)
    _, _, info = jacobian_penalty(f, x, method="exact", explain=True, check_independence=check)
    assert info.mode == "rows"  # D = 2 < C = 10, yet rows
    _, _, info = jacobian_penalty(lambda z: last(torch.tanh(first(z))), x, method="exact", explain=True,
                                  check_independence=check)
    assert info.mode == "columns"  # the control: no layer norm, so columns


# --- autocast, compile -------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_under_bfloat16_autocast_every_method_agrees_with_float32(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 10))
    x = torch.randn(16, 20)
    expected = per_sample_penalty(model.double(), x.double()).item()
    model.float()
    draws = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for seed in range(8):
            y, value = jacobian_penalty(model, x, method=method, num_projections=10,
                                        generator=torch.Generator().manual_seed(seed))
            draws.append(value.float().item())
        value.backward()  # and it trains
    # 10 orthogonal projections of C = 10 are exact; jvp and fd are upcast, so only bfloat16's
    # own rounding (about 1%) and, for jvp and fd, the estimators' spread remain.
    assert abs(sum(draws) / len(draws) - expected) < 0.05 * expected


def test_fd_in_a_reduced_precision_dtype_is_refused_in_plain_words():
    model = nn.Linear(4, 3).to(torch.bfloat16)
    with pytest.raises(ValueError, match="'fd' cannot run in torch.bfloat16"):
        jacobian_penalty(model, torch.randn(2, 4, dtype=torch.bfloat16), method="fd")


def test_a_compiled_model_is_quiet_and_gives_the_eager_penalty():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    x = torch.randn(4, 5)
    expected = jacobian_penalty(model, x, method="exact")[1]
    compiled = torch.compile(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            y, value = jacobian_penalty(compiled, x, method="exact")
            (y.sum() + value).backward()
    assert not caught, [str(w.message)[:120] for w in caught]
    torch.testing.assert_close(value, expected)


def test_a_checked_model_still_deep_copies_and_saves(tmp_path):
    import copy

    def select(out):
        return out

    model = Counting().to(DOUBLE)
    x = torch.randn(4, 5, dtype=DOUBLE)
    jacobian_penalty(model, x, target=select)  # caches a finding on the model
    torch.save(copy.deepcopy(model), tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    calls = loaded.calls
    jacobian_penalty(loaded, x, target=select)
    assert loaded.calls == calls + 1  # the cache came along: no second check


def test_with_the_check_off_a_model_that_runs_only_on_its_full_batch_still_works():
    """The recorded pass falls back to the whole batch when f reshapes by the batch size."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 3).to(DOUBLE)
    x = torch.randn(3, 4, dtype=DOUBLE)

    def f(z):
        return torch.tanh(lin(z.reshape(3, 4)))  # only a batch of three

    _, exact = jacobian_penalty(f, x, method="exact", check_independence=False)
    oracle = torch.autograd.functional.jacobian(f, x)  # (3, 3, 3, 4): blocks on the diagonal
    assert exact.item() == pytest.approx(sum(oracle[b, :, b].pow(2).sum().item() for b in range(3)) / 3)
