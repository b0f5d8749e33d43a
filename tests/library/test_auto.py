"""method="auto" follows the cost model (jacobian_penalty.costs.plan) and says why; targets and
the full output the caller's loss needs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jacobian_penalty import jacobian_penalty, plan

DOUBLE = torch.float64


def per_sample_penalty(f, x):
    batch = x.shape[0]
    jac = torch.autograd.functional.jacobian(f, x).reshape(batch, -1, batch, x[0].numel())
    return torch.stack([jac[b, :, b, :].pow(2).sum() for b in range(batch)]).mean()


@pytest.mark.parametrize("inputs, outputs, norm, method, mode", [
    (20, 2, nn.Identity, "exact", "rows"),          # C small: every row costs less than 2x projection
    (2, 50, nn.Identity, "exact", "columns"),       # D small and forward mode safe: columns
    (2, 50, nn.LayerNorm, "projection", "probes"),  # D small but layer norm: rows would be 50 passes
    (20, 10, nn.Identity, "projection", "probes"),  # neither small
])
def test_auto_picks_by_the_cost_model_and_explains(inputs, outputs, norm, method, mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(inputs, 8), norm(8), nn.Tanh(), nn.Linear(8, outputs)).to(DOUBLE)
    x = torch.randn(3, inputs, dtype=DOUBLE)
    _, value, info = jacobian_penalty(model, x, method="auto", explain=True,
                                      generator=torch.Generator().manual_seed(0))
    assert (info.method, info.mode) == (method, mode) and info.reason.startswith("auto chose")
    expected = plan("auto", inputs=inputs, outputs=outputs, forward_mode_safe=norm is nn.Identity)
    assert (expected.method, expected.mode, expected.time_factor) == (info.method, info.mode, info.time_factor)
    if method == "exact":
        torch.testing.assert_close(value, per_sample_penalty(model, x), rtol=1e-10, atol=0)


class Split(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(5, 6), nn.Tanh())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        z = self.features(x)
        return {"penultimate_layer": z, "logits": self.head(z)}


@pytest.mark.parametrize("method", ["exact", "projection", "jvp", "fd", "auto"])
def test_the_full_output_comes_back_with_its_graph_and_the_target_is_what_is_penalised(method):
    torch.manual_seed(0)
    model = Split().to(DOUBLE)
    x = torch.randn(4, 5, dtype=DOUBLE)
    expected = per_sample_penalty(model.features, x)
    n = 5 if method in ("jvp", "fd") else 6  # D = 5 input directions, C = 6 projections: a full frame
    for target in (lambda out: out["penultimate_layer"], "features"):
        out, value = jacobian_penalty(model, x, method=method, target=target, num_projections=n, fd_step=1e-7)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=0)  # a full orthogonal frame: exact
        plain = model(x)["logits"].sum()
        (grad,) = torch.autograd.grad(out["logits"].sum(), model.head.weight)
        torch.testing.assert_close(grad, torch.autograd.grad(plain, model.head.weight)[0])


def test_a_target_that_is_not_there_is_refused_in_plain_words():
    model = Split().to(DOUBLE)
    x = torch.randn(2, 5, dtype=DOUBLE)
    with pytest.raises(ValueError, match="no submodule named 'feature'"):
        jacobian_penalty(model, x, target="feature")
    with pytest.raises(ValueError, match="not a module"):
        jacobian_penalty(lambda t: model(t), x, target="features")
    with pytest.raises(ValueError, match="dict with keys"):
        jacobian_penalty(model, x)
