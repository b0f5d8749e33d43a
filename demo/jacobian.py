"""Penalties on the Frobenius norm of a network's input-output Jacobian.

For a batch x of shape (B, ...) and a network f with output y = f(x) of shape (B, ...), let
J_b = d y_b / d x_b be the Jacobian of sample b, with the non-batch dims of x (D numbers) and of
y (C numbers) flattened, so J_b is C x D. The penalty is the batch mean of ||J_b||_F^2:

    R(x) = 1/B sum_b ||J_b||_F^2 = 1/B sum_b sum_{c,d} (d y_bc / d x_bd)^2      (no 1/2 factor)

Adding lambda * R to the cross-entropy makes the network less sensitive to input perturbations
(Drucker & LeCun 1992; Hoffman, Roberts & Yaida 2019, "Robust Learning with Jacobian
Regularization", arXiv:1908.02729).

Estimators (F = one forward pass, B = one backward pass, about 2F):

- "exact": all C rows of every J_b through one batched vector-Jacobian product (VJP) over the C
  one-hot vectors (`is_grads_batched=True`, vmap over the backward). This is the forum thread's
  loop of C backward passes without the Python loop; compute and memory still grow with C, so
  `chunk_size` bounds how many rows are taken at once.
- "projection": ||J||_F^2 = C E_v ||v^T J||^2 for v uniform on the unit sphere in R^C (Hoffman et
  al. 2019). One VJP per projection, independent of C; relative variance below 2 for one
  projection, falling as 1/n for n projections.
- "jvp": forward mode with Gaussian input probes (Hutchinson): ||J||_F^2 = E_u ||J u||^2 for
  u ~ N(0, I_D). One forward pass with dual numbers (about 3F) per probe, independent of C.
  Needs forward-mode rules for every op of f.
- "fd": finite differences along random unit input directions d: J d ~ (f(x + h d) - f(x)) / h,
  and ||J||_F^2 = D E_d ||J d||^2. One extra forward pass and no double backward, so it also works
  with ops that have no second derivative (flash attention, cuDNN RNNs). Biased by O(h).

Every estimator returns y = f(x) from the forward pass it used, so the caller reuses y for its
classification loss. None of them writes a parameter's `.grad`: gradients are taken with
`torch.autograd.grad` with respect to the input only. With `create_graph=True` the penalty is
differentiable with respect to the parameters of f (double backpropagation); with False it is a
detached number for reporting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

__all__ = ["METHODS", "MethodInfo", "jacobian_penalty", "jacobian_norms", "per_sample_jacobian"]


@dataclass(frozen=True)
class MethodInfo:
    """What an estimator computes and what it costs, for docs, the CLI and the UI's hints."""

    estimates: str
    cost: str
    grows_with_outputs: bool
    needs_double_backward: bool


METHODS = MappingProxyType(
    {
        "projection": MethodInfo(
            "||J||_F^2, unbiased (random output projections, Hoffman et al. 2019)",
            "one extra backward with create_graph per projection",
            grows_with_outputs=False,
            needs_double_backward=True,
        ),
        "exact": MethodInfo(
            "||J||_F^2, exact (all C rows in one batched VJP)",
            "C rows of backward, vectorised; memory grows with C (bounded by chunk_size)",
            grows_with_outputs=True,
            needs_double_backward=True,
        ),
        "jvp": MethodInfo(
            "||J||_F^2, unbiased (forward-mode, Gaussian input probes)",
            "one dual-number forward per probe, then backward through it",
            grows_with_outputs=False,
            needs_double_backward=False,
        ),
        "fd": MethodInfo(
            "||J||_F^2, biased by O(step) (finite differences along random input directions)",
            "one extra forward per direction; no double backward",
            grows_with_outputs=False,
            needs_double_backward=False,
        ),
    }
)

# Forward-difference step in input units. Images live in [0, 1], 2-D points are of order 1:
# 1e-2 keeps the O(h) bias small there while float32 rounding error (~1e-7 * |f| / h) stays far
# below it.
DEFAULT_FD_STEP = 1e-2


def jacobian_penalty(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    method: str = "projection",
    num_projections: int = 1,
    create_graph: bool = True,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    fd_step: float = DEFAULT_FD_STEP,
) -> tuple[Tensor, Tensor]:
    """Return (y, penalty): y = f(x) and the batch mean of an estimate of ||J(x_b)||_F^2.

    Args:
        f: the network (or any function) mapping a batch (B, ...) to outputs (B, ...).
            Samples must not interact (no BatchNorm in training mode).
        x: batched floating-point input, shape (B, ...).
        method: "projection" (default), "exact", "jvp" or "fd"; see the module docstring.
        num_projections: random projections / probes / directions averaged per sample
            (ignored by "exact").
        create_graph: keep the graph so the penalty can be backpropagated to f's parameters.
        generator: a seeded torch.Generator makes the random estimators reproducible.
        chunk_size: "exact" only: output rows per batched VJP, to bound memory.
        fd_step: "fd" only: the finite-difference step h in input units.

    Example:
        >>> logits, penalty = jacobian_penalty(model, x, method="projection")
        >>> loss = F.cross_entropy(logits, target) + lam * penalty
        >>> loss.backward()

    The reverse-mode methods differentiate f with respect to a private copy of x that requires
    grad, so a plain `loss.backward()` also computes d loss / d x through f's first layer, which
    nobody reads. `loss.backward(inputs=list(model.parameters()))` skips it (on a CPU up to a fifth
    of a projection step; benchmarks/README.md).
    """
    _check_arguments(x, method, num_projections, chunk_size, fd_step)
    if method == "jvp":
        return _jvp(f, x, num_projections, create_graph, generator)
    if method == "fd":
        return _finite_difference(f, x, num_projections, create_graph, generator, fd_step)

    x_in = x if x.requires_grad else x.detach().requires_grad_(True)
    y = f(x_in)
    y_flat = y.reshape(y.shape[0], -1)  # (B, C)
    if method == "exact":
        sq_norms = _exact_squared_norms(y_flat, x_in, create_graph, chunk_size)
    else:
        sq_norms = _projection(y_flat, x_in, num_projections, create_graph, generator)
    penalty = sq_norms.mean()
    return y, penalty if create_graph else penalty.detach()


def jacobian_norms(f: Callable[[Tensor], Tensor], x: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """Exact per-sample Frobenius norms ||J(x_b)||_F, shape (B,), without a graph (for reporting)."""
    _check_arguments(x, "exact", 1, chunk_size, DEFAULT_FD_STEP)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        y = f(x_in)
        sq = _exact_squared_norms(y.reshape(y.shape[0], -1), x_in, False, chunk_size)
    return sq.detach().sqrt()


def per_sample_jacobian(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The full Jacobian of every sample, shape (B, C, *x.shape[1:]), without a graph.

    Meant for small batches (heatmaps): it holds all C x D numbers of each sample.
    """
    _check_arguments(x, "exact", 1, None, DEFAULT_FD_STEP)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        y = f(x_in).reshape(x.shape[0], -1)  # (B, C)
        rows = _one_hot_rows(y, 0, y.shape[1])  # (C, B, C)
        (vjps,) = torch.autograd.grad(y, x_in, rows, is_grads_batched=True)  # (C, B, ...)
    return vjps.detach().transpose(0, 1)


def _check_arguments(
    x: Tensor, method: str, num_projections: int, chunk_size: int | None, fd_step: float
) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if isinstance(num_projections, bool) or not isinstance(num_projections, int) or num_projections < 1:
        raise ValueError(f"num_projections must be a whole number >= 1, got {num_projections!r}.")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a whole number >= 1 or None, got {chunk_size!r}.")
    if not (fd_step > 0 and fd_step < float("inf")):
        raise ValueError(f"fd_step must be a positive finite number, got {fd_step!r}.")
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() < 2:
        raise ValueError(
            f"x must be batched, shape (B, ...) with at least 2 dims; got shape {tuple(x.shape)}. "
            "For one example use x.unsqueeze(0)."
        )
    if not x.is_floating_point():
        raise ValueError(
            f"x must be floating point to be differentiated, got dtype {x.dtype}; "
            "convert it with x.float()."
        )


def _one_hot_rows(y_flat: Tensor, start: int, stop: int) -> Tensor:
    """grad_outputs selecting output rows start..stop-1 of every sample: (K, B, C)."""
    batch, outputs = y_flat.shape
    eye = torch.eye(outputs, dtype=y_flat.dtype, device=y_flat.device)[start:stop]  # (K, C)
    return eye.unsqueeze(1).expand(stop - start, batch, outputs)


def _exact_squared_norms(
    y_flat: Tensor, x: Tensor, create_graph: bool, chunk_size: int | None
) -> Tensor:
    """sum over all C rows of ||e_c^T J_b||^2 for every sample b, shape (B,)."""
    outputs = y_flat.shape[1]
    step = outputs if chunk_size is None else chunk_size
    total = None
    for start in range(0, outputs, step):
        rows = _one_hot_rows(y_flat, start, min(start + step, outputs))  # (K, B, C)
        # retain_graph: the caller still backpropagates its loss through y.
        (vjps,) = torch.autograd.grad(
            y_flat, x, rows, retain_graph=True, create_graph=create_graph, is_grads_batched=True
        )  # (K, B, ...)
        part = _sum_of_squares(vjps).sum(dim=0)  # (B,)
        total = part if total is None else total + part
    return total


class _SumOfSquares(torch.autograd.Function):
    """sum_d t[k, b, d...]^2 for a batch of VJPs t of shape (K, B, ...) -> (K, B).

    Same value as t.pow(2).flatten(2).sum(2), with a cheaper backward: one broadcast multiply,
    2 g t, where pow's backward makes t.pow(1), 2 * that, then the product (three passes over t
    and two temporaries of its size). It matters for "exact", whose t holds all C rows of every
    sample. The backward is made of differentiable ops, so higher derivatives still work.
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


def _sum_of_squares(t: Tensor) -> Tensor:
    return _SumOfSquares.apply(t)


def _projection(
    y_flat: Tensor, x: Tensor, n: int, create_graph: bool, generator: torch.Generator | None
) -> Tensor:
    """C * mean_k ||v_k^T J_b||^2 with v_k uniform on the unit sphere of R^C, shape (B,)."""
    batch, outputs = y_flat.shape
    v = _randn((n, batch, outputs), y_flat, generator)
    v = v / v.norm(dim=2, keepdim=True)  # (n, B, C), unit rows
    if n == 1:
        # A plain VJP: no vmap over the backward, the cheapest path for the common case.
        (vjp,) = torch.autograd.grad(y_flat, x, v[0], retain_graph=True, create_graph=create_graph)
        vjps = vjp.unsqueeze(0)
    else:
        (vjps,) = torch.autograd.grad(
            y_flat, x, v, retain_graph=True, create_graph=create_graph, is_grads_batched=True
        )
    # Scaling by C makes the estimate unbiased: E_v[v v^T] = I / C.
    return outputs * _sum_of_squares(vjps).mean(dim=0)


def _jvp(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    n: int,
    create_graph: bool,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """mean_k ||J_b u_k||^2 with u_k ~ N(0, I_D): forward-mode, one dual forward per probe."""
    estimates = []
    y = None
    for _ in range(n):
        u = _randn(x.shape, x, generator)  # (B, ...)
        with fwAD.dual_level():
            out = f(fwAD.make_dual(x, u))
            primal, tangent = fwAD.unpack_dual(out)
        if y is None:
            y = primal  # the first probe's primal is f(x), with its graph for the caller's loss
        estimates.append(tangent.reshape(x.shape[0], -1).pow(2).sum(dim=1))  # (B,)
    penalty = torch.stack(estimates).mean()
    return y, penalty if create_graph else penalty.detach()


def _finite_difference(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    n: int,
    create_graph: bool,
    generator: torch.Generator | None,
    step: float,
) -> tuple[Tensor, Tensor]:
    """D * mean_k ||(f(x + h d_k) - f(x)) / h||^2 with d_k uniform unit directions in R^D."""
    batch = x.shape[0]
    inputs = x[0].numel()
    y = f(x)
    y_flat = y.reshape(batch, -1)
    estimates = []
    for _ in range(n):
        d = _randn(x.shape, x, generator)
        d = d / d.reshape(batch, -1).norm(dim=1).reshape(batch, *([1] * (x.dim() - 1)))
        jd = (f(x + step * d).reshape(batch, -1) - y_flat) / step  # (B, C), ~ J d
        estimates.append(inputs * jd.pow(2).sum(dim=1))
    penalty = torch.stack(estimates).mean()
    return y, penalty if create_graph else penalty.detach()


def _randn(shape: tuple[int, ...] | torch.Size, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal numbers on like's device and dtype, drawn from generator if given.

    A generator lives on one device; draw on its device and move, so a CPU generator can seed
    a CUDA run (and the same seed gives the same probes on every device).
    """
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return noise.to(like.device)
