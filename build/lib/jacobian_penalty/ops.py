"""Two small tensor helpers shared by the estimators: a sum of squares with a cheap backward, and
normal noise drawn from an optional generator on the input's device."""

from __future__ import annotations

import torch
from torch import Tensor


class _SumOfSquares(torch.autograd.Function):
    """sum_d t[k, b, d...]^2 for a batch of VJPs t of shape (K, B, ...) -> (K, B).

    Same value as t.pow(2).flatten(2).sum(2), with a cheaper backward: one broadcast multiply,
    2 g t, where pow's backward makes t.pow(1), 2 * that, then the product (three passes over t
    and two temporaries of its size). The backward is made of differentiable ops, so higher
    derivatives still work.
    """

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        ctx.save_for_backward(t)
        flat = t.flatten(2)  # (K, B, D)
        return torch.linalg.vecdot(flat, flat)  # (K, B)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (t,) = ctx.saved_tensors
        return t * (2 * grad).reshape(*grad.shape, *([1] * (t.dim() - 2)))


def sum_of_squares(t: Tensor) -> Tensor:
    """(K, B, ...) -> (K, B): the squared norm of every sample's slice."""
    return _SumOfSquares.apply(t)


def randn(shape: tuple[int, ...] | torch.Size, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal numbers on like's device and dtype, drawn from generator if given.

    A generator lives on one device; draw on its device and move, so a CPU generator can seed
    a CUDA run (and the same seed gives the same probes on every device).
    """
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return noise.to(like.device)
