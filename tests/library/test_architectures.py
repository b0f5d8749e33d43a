"""Every method on attention, recurrent and torchvision models, against the float64 oracle.

The random estimators are checked exactly, not statistically: the test draws the same
(independent, probes="iid") probes from the same seeded generator and applies them to the oracle
Jacobian, so the penalty must equal
C mean ||v^T J||^2 (projection), mean ||J u||^2 (jvp) or D mean ||J d||^2 (fd, to O(h)).
Each model runs in eval mode where PyTorch would pick a fused attention kernel without the
derivatives the penalty needs, and the penalty must also backpropagate to the parameters.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from jacobian_penalty import METHODS, jacobian_penalty

DOUBLE = torch.float64
FD_STEP = 1e-6
N = 3  # probes per call


class Sequence(nn.Module):
    """(B, T, E) -> (B, T * H): a sequence layer's output, flattened per sample."""

    def __init__(self, layer: nn.Module, transpose: bool = False) -> None:
        super().__init__()
        self.layer, self.transpose = layer, transpose

    def forward(self, x):
        if self.transpose:  # a batch_first=False layer: (T, B, E) in and out
            return self.layer(x.transpose(0, 1)).transpose(0, 1).flatten(1)
        out = self.layer(x)
        return (out[0] if isinstance(out, tuple) else out).flatten(1)


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0].flatten(1)


def transformer():
    layer = nn.TransformerEncoderLayer(8, 2, 16)  # PyTorch's defaults: batch_first=False, dropout 0.1
    return Sequence(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), transpose=True), (2, 4, 8)


CASES = {
    "transformer-encoder": transformer,
    "multihead-attention": lambda: (SelfAttention(), (2, 4, 8)),
    "lstm": lambda: (Sequence(nn.LSTM(3, 5, batch_first=True)), (2, 4, 3)),
    "gru": lambda: (Sequence(nn.GRU(3, 5, batch_first=True)), (2, 4, 3)),
    "resnet18": lambda: (torchvision.models.resnet18(num_classes=4), (2, 3, 32, 32)),
    "vision-transformer": lambda: (
        torchvision.models.VisionTransformer(
            image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3
        ),
        (2, 3, 8, 8),
    ),
}


def make(name):
    torch.manual_seed(0)
    model, shape = CASES[name]()
    return model.to(DOUBLE).eval(), torch.randn(shape, dtype=DOUBLE)


def oracle_jacobians(model, x):
    """(B, C, D): each sample's Jacobian from the functional jacobian of that sample alone."""
    rows = []
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda xb: model(xb.unsqueeze(0)), x[b], vectorize=True)
        rows.append(jac.reshape(-1, x[b].numel()))
    return torch.stack(rows)


def expected_penalty(method, jac, x):
    """What the method computes with the probes a generator seeded with 0 gives it."""
    batch, outputs, inputs = jac.shape
    gen = torch.Generator().manual_seed(0)
    if method == "exact":
        return jac.pow(2).sum((1, 2)).mean()
    if method == "projection":
        v = torch.randn((N, batch, outputs), generator=gen, dtype=DOUBLE)
        v = v / v.norm(dim=2, keepdim=True)
        return outputs * torch.einsum("kbc,bcd->kbd", v, jac).pow(2).sum(2).mean()
    probes = torch.randn((N, batch, inputs), generator=gen, dtype=DOUBLE)  # one draw for all N probes
    if method == "fd":
        probes = probes / probes.norm(dim=2, keepdim=True)
        return inputs * torch.einsum("bcd,kbd->kbc", jac, probes).pow(2).sum(2).mean()
    return torch.einsum("bcd,kbd->kbc", jac, probes).pow(2).sum(2).mean()


@pytest.mark.parametrize("name", list(CASES))
def test_every_method_matches_the_oracle_and_trains(name):
    model, x = make(name)
    jac = oracle_jacobians(model, x)
    has_layer_norm = any(isinstance(m, nn.LayerNorm) for m in model.modules())
    for method in METHODS:
        gen = torch.Generator().manual_seed(0)
        options = dict(method=method, num_projections=N, generator=gen, fd_step=FD_STEP, probes="iid")
        if method == "jvp" and has_layer_norm:  # forward mode through layer norm: wrong gradients
            with pytest.raises(ValueError, match="layer norm.*'projection'"):
                jacobian_penalty(model, x, **options)
            continue
        y, penalty = jacobian_penalty(model, x, **options)
        rtol = 1e-4 if method == "fd" else 1e-8
        torch.testing.assert_close(penalty, expected_penalty(method, jac, x), rtol=rtol, atol=0, msg=method)
        torch.testing.assert_close(y, model(x))
        grads = torch.autograd.grad(penalty, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
        used = [g for g in grads if g is not None]
        assert used and all(torch.isfinite(g).all() for g in used), method


def test_lstm_on_the_cpu_trains_with_jvp_despite_onednn():
    """nn.LSTM in float32 on the CPU runs mkldnn_rnn_layer, which has no forward-mode rule."""
    torch.manual_seed(0)
    model = Sequence(nn.LSTM(3, 5, batch_first=True))
    x = torch.randn(2, 4, 3)
    _, penalty = jacobian_penalty(model, x, method="jvp")
    penalty.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
