"""The penalty's entry points: `jacobian_penalty`, `jacobian_norms`, `per_sample_jacobian`.

See the package docstring for the formula and the estimators.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from jacobian_penalty import exact
from jacobian_penalty.guards import Forward, ForwardModeUnavailable, check_arguments, functorch_safe
from jacobian_penalty.ops import randn, sum_of_squares

__all__ = ["METHODS", "MethodInfo", "DEFAULT_FD_STEP", "jacobian_penalty", "jacobian_norms", "per_sample_jacobian"]


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
            "||J||_F^2, exact (every row of J, or every column when inputs are fewer than outputs)",
            "min(C, D) products, each about one backward pass",
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
    coupling: str = "raise",
) -> tuple[Tensor, Tensor]:
    """Return (y, penalty): y = f(x) and the batch mean of an estimate of ||J(x_b)||_F^2.

    Args:
        f: the network (or any function) mapping a batch (B, ...) to one tensor (B, ...).
            Samples must not interact: see `coupling`.
        x: batched floating-point input, shape (B, ...), B >= 1.
        method: "projection" (default), "exact", "jvp" or "fd"; see the package docstring.
        num_projections: random projections / probes / directions averaged per sample
            (ignored by "exact").
        create_graph: keep the graph so the penalty can be backpropagated to f's parameters.
        generator: a seeded torch.Generator makes the random estimators reproducible.
        chunk_size: "exact" only: output rows per batched VJP (and reverse mode forced). None
            picks the cheaper direction and a row count that suits the device.
        fd_step: "fd" only: the finite-difference step h in input units.
        coupling: what to do when a module that mixes samples runs inside f (BatchNorm in
            training mode, a batch_first=False attention or RNN layer fed batch-first data):
            "raise" (default) a SampleCouplingError that names it and the fixes, or "warn" and
            go on. Raising is the default because the number is then silently different from
            the per-sample penalty (tests/library/test_guards.py measures by how much), and a
            warning inside a training loop scrolls away.

    Raises:
        ValueError in plain words for bad arguments, an output that is not one tensor with one
        row per sample, a method that cannot run on f (e.g. "jvp" through an op without a
        forward-mode rule); SampleCouplingError (a ValueError) as above.

    Example:
        >>> logits, penalty = jacobian_penalty(model, x, method="projection")
        >>> loss = F.cross_entropy(logits, target) + lam * penalty
        >>> loss.backward()

    The reverse-mode methods differentiate f with respect to a private copy of x that requires
    grad, so a plain `loss.backward()` also computes d loss / d x through f's first layer, which
    nobody reads. `loss.backward(inputs=list(model.parameters()))` skips it.
    """
    check_arguments(x, method, METHODS, num_projections, chunk_size, fd_step, coupling)
    if method == "jvp":
        return _jvp(f, x, num_projections, create_graph, generator, coupling)
    if method == "fd":
        return _finite_difference(f, x, num_projections, create_graph, generator, fd_step, coupling)

    x_in = x if x.requires_grad else x.detach().requires_grad_(True)
    forward = Forward(f, x_in, double_backward=True, forward_mode=method == "exact", coupling=coupling,
                      replay=method == "exact")
    vjp_fn = None
    batched = method == "exact" and create_graph and exact.batches_rows(f, x_in, create_graph, chunk_size)
    if batched and functorch_safe(f):  # torch.func's VJP, vmapped over rows (DDP cannot run under it)
        y, vjp_fn = forward.with_vjp(x_in)
    else:
        y = forward(x_in)
    try:
        if method == "exact":
            sq_norms = exact.squared_norms(forward, x_in, y, create_graph=create_graph, chunk_size=chunk_size,
                                           vjp_fn=vjp_fn)
        else:
            sq_norms = _projection(y.reshape(y.shape[0], -1), x_in, num_projections, create_graph, generator)
    finally:
        forward.finish()
    penalty = sq_norms.mean()
    return y, penalty if create_graph else penalty.detach()


def jacobian_norms(
    f: Callable[[Tensor], Tensor], x: Tensor, *, chunk_size: int | None = None, coupling: str = "raise"
) -> Tensor:
    """Exact per-sample Frobenius norms ||J(x_b)||_F, shape (B,), without a graph (for reporting)."""
    check_arguments(x, "exact", METHODS, 1, chunk_size, DEFAULT_FD_STEP, coupling)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        forward = Forward(f, x_in, double_backward=False, forward_mode=True, coupling=coupling, replay=True)
        y = forward(x_in)
        try:
            sq = exact.squared_norms(forward, x_in, y, create_graph=False, chunk_size=chunk_size)
        finally:
            forward.finish()
    return sq.detach().sqrt()


def per_sample_jacobian(f: Callable[[Tensor], Tensor], x: Tensor, *, coupling: str = "raise") -> Tensor:
    """The full Jacobian of every sample, shape (B, C, *x.shape[1:]), without a graph.

    Meant for small batches (heatmaps): it holds all C x D numbers of each sample.
    """
    check_arguments(x, "exact", METHODS, 1, None, DEFAULT_FD_STEP, coupling)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        forward = Forward(f, x_in, double_backward=False, forward_mode=False, coupling=coupling, replay=False)
        y = forward(x_in).reshape(x.shape[0], -1)  # (B, C)
        rows = exact._one_hot(y, 0, y.shape[1])  # (C, B, C)
        (vjps,) = torch.autograd.grad(y, x_in, rows, is_grads_batched=True)  # (C, B, ...)
    return vjps.detach().transpose(0, 1)


def _projection(
    y_flat: Tensor, x: Tensor, n: int, create_graph: bool, generator: torch.Generator | None
) -> Tensor:
    """C * mean_k ||v_k^T J_b||^2 with v_k uniform on the unit sphere of R^C, shape (B,)."""
    batch, outputs = y_flat.shape
    v = randn((n, batch, outputs), y_flat, generator)
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
    return outputs * sum_of_squares(vjps).mean(dim=0)


def _jvp(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    n: int,
    create_graph: bool,
    generator: torch.Generator | None,
    coupling: str,
) -> tuple[Tensor, Tensor]:
    """mean_k ||J_b u_k||^2 with u_k ~ N(0, I_D): forward mode, one dual forward per probe."""
    probes = [randn(x.shape, x, generator) for _ in range(n)]  # drawn before f's random ops run
    forward = Forward(f, x, double_backward=False, forward_mode=True, coupling=coupling, replay=n > 1)
    estimates = []
    y = None
    try:
        for k, u in enumerate(probes):
            primal, tangent = forward.tangent(x.detach(), u, first=k == 0)
            if y is None:
                y = primal  # the first probe's primal is f(x), with its graph for the caller's loss
            estimates.append(tangent.reshape(x.shape[0], -1).pow(2).sum(dim=1))  # (B,)
    except ForwardModeUnavailable as error:
        raise ValueError(str(error)) from error
    finally:
        forward.finish()
    penalty = torch.stack(estimates).mean()
    return y, penalty if create_graph else penalty.detach()


def _finite_difference(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    n: int,
    create_graph: bool,
    generator: torch.Generator | None,
    step: float,
    coupling: str,
) -> tuple[Tensor, Tensor]:
    """D * mean_k ||(f(x + h d_k) - f(x)) / h||^2 with d_k uniform unit directions in R^D.

    Every pass of f sees the random state of the first, so dropout keeps one mask: a difference
    of two masks would measure the masks (about 25,000 against an exact 0.74 for Dropout(0.5)).
    """
    batch, inputs = x.shape[0], x[0].numel()
    forward = Forward(f, x, double_backward=False, forward_mode=False, coupling=coupling, replay=True)
    y = forward(x)
    y_flat = y.reshape(batch, -1)
    directions = [randn(x.shape, x, generator) for _ in range(n)]
    forward.mark()  # the random state to leave behind: after one pass and the draws
    estimates = []
    try:
        for d in directions:
            d = d / d.reshape(batch, -1).norm(dim=1).reshape(batch, *([1] * (x.dim() - 1)))
            jd = (forward.again(x + step * d).reshape(batch, -1) - y_flat) / step  # (B, C), ~ J d
            estimates.append(inputs * jd.pow(2).sum(dim=1))
    finally:
        forward.finish()
    penalty = torch.stack(estimates).mean()
    return y, penalty if create_graph else penalty.detach()


