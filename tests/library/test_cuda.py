"""The library on a CUDA device (skipped without one; `make bench-gpu` runs these on a GPU).

Where PyTorch picks kernels without the derivatives the penalty needs (cuDNN RNNs have no double
backward; flash / memory-efficient attention neither, nor forward-mode rules), every method must
still run and agree with the float64 oracle computed on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jacobian_penalty import METHODS, jacobian_norms, jacobian_penalty

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


class Flat(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        out = self.layer(x)
        return (out[0] if isinstance(out, tuple) else out).flatten(1)


CASES = {
    "lstm": (lambda: Flat(nn.LSTM(3, 5, batch_first=True)), (4, 6, 3)),
    "gru": (lambda: Flat(nn.GRU(3, 5, batch_first=True)), (4, 6, 3)),
    "transformer": (
        lambda: Flat(nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2,
                                           enable_nested_tensor=False)),
        (4, 6, 16),
    ),
    "mlp-2-to-300": (lambda: nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 300)), (8, 2)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_method_runs_and_trains_on_cuda_where_fused_kernels_lack_derivatives(name):
    dtype = torch.float32
    factory, shape = CASES[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(shape)
    expected = jacobian_penalty(model.double(), x.double(), method="exact")[1].item()
    model = model.to("cuda", dtype)
    for method in METHODS:
        y, penalty = jacobian_penalty(model, x.to("cuda", dtype), method=method, num_projections=64)
        assert penalty.is_cuda and penalty.dtype == dtype
        penalty.float().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad(set_to_none=True)
        if method == "exact":
            assert penalty.item() == pytest.approx(expected, rel=0.05)  # TF32 matmuls may be on
        else:  # random estimators with 64 probes: within a wide band of the exact value
            assert 0.5 * expected < penalty.item() < 2 * expected


def test_exact_on_cuda_batched_rows_match_one_row_at_a_time():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 100)).cuda().double()
    x = torch.randn(16, 1, 8, 8, device="cuda", dtype=torch.float64)
    batched = jacobian_penalty(model, x, method="exact")[1]
    one_by_one = jacobian_penalty(model, x, method="exact", chunk_size=1)[1]
    torch.testing.assert_close(batched, one_by_one, rtol=1e-10, atol=0)
    torch.testing.assert_close(jacobian_norms(model, x).pow(2).mean(), one_by_one, rtol=1e-10, atol=0)
