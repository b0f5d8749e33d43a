"""Orthogonal probes: unbiased, exact at n = C, and below the variance of independent probes.

Oracle: the per-sample Jacobian from torch.autograd.functional.jacobian in float64; tolerances
from the draws' own spread.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jacobian_penalty import jacobian_penalty
from jacobian_penalty.probes import unit

DOUBLE = torch.float64
DRAWS = 200
Z_TOLERANCE = 4.5


def model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 6)).to(DOUBLE)
    return model, torch.randn(3, 5, dtype=DOUBLE)


def exact_value(model, x):
    jac = torch.autograd.functional.jacobian(model, x).reshape(3, 6, 3, 5)
    return torch.stack([jac[b, :, b, :].pow(2).sum() for b in range(3)]).mean().item()


def draws(model, x, method, n, kind):
    gen = torch.Generator().manual_seed(0)
    return torch.tensor([
        jacobian_penalty(model, x, method=method, num_projections=n, probes=kind, generator=gen,
                         create_graph=False)[1].item()
        for _ in range(DRAWS)
    ], dtype=DOUBLE)


@pytest.mark.parametrize("method, n", [("projection", 4), ("jvp", 3), ("fd", 3)])
def test_orthogonal_probes_are_unbiased_with_less_variance_than_independent_ones(method, n):
    model, x = model_and_batch()
    expected = exact_value(model, x)
    orth, iid = draws(model, x, method, n, "orthogonal"), draws(model, x, method, n, "iid")
    for values in (orth, iid):
        se = values.std().item() / math.sqrt(DRAWS)
        bias_allowed = Z_TOLERANCE * se + (2e-3 * expected if method == "fd" else 0.0)  # fd: O(h)
        assert abs(values.mean().item() - expected) < bias_allowed
    # Independent probes divide the variance by n; an orthonormal frame does better. With 200
    # draws the ratio of sample variances is within about 20% of the true one (expected: 0.3-0.5).
    assert orth.var().item() < 0.8 * iid.var().item()


def test_c_orthogonal_projections_are_exact_and_frames_are_orthonormal():
    model, x = model_and_batch()
    gen = torch.Generator().manual_seed(1)
    _, value = jacobian_penalty(model, x, num_projections=6, generator=gen)
    assert value.item() == pytest.approx(exact_value(model, x), rel=1e-10)
    for n, dim in ((3, 6), (6, 6), (9, 6)):  # a partial frame, a full one, and two frames
        q = unit(n, 4, dim, x, gen, "orthogonal")  # (n, B, dim)
        for start in range(0, n, dim):  # each frame of at most dim probes is orthonormal
            block = q[start:start + dim]
            gram = torch.einsum("kbd,jbd->bkj", block, block)
            m = block.shape[0]
            torch.testing.assert_close(gram, torch.eye(m, dtype=DOUBLE).expand(4, m, m), rtol=0, atol=1e-12)


def test_estimator_spread_gives_per_seed_estimates_beside_the_exact_value():
    from jacobian_penalty import estimator_spread

    model, x = model_and_batch()
    expected = exact_value(model, x)
    one = estimator_spread(model, x, method="projection", num_projections=1, seeds=range(64))
    assert one.exact == pytest.approx(expected, rel=1e-10) and len(one.estimates) == 64
    assert abs(one.bias) < Z_TOLERANCE * one.std / math.sqrt(64) and one.relative_std > 0
    assert one.plan.method == "projection" and one.seconds_per_call > 0
    full = estimator_spread(model, x, method="projection", num_projections=6, seeds=range(4))  # C = 6
    assert full.std < 1e-10 * expected and full.mean == pytest.approx(expected, rel=1e-10)
