"""The penalty's entry points: `jacobian_penalty`, `jacobian_norms`, `per_sample_jacobian`.

See the package docstring for the formula and the estimators.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from jacobian_penalty import exact, probes
from jacobian_penalty.behaviour import Findings, first_call
from jacobian_penalty.costs import Plan, plan
from jacobian_penalty.forward_mode import ForwardModeUnsafe
from jacobian_penalty.guards import Forward, ForwardModeUnavailable, check_arguments, functorch_safe
from jacobian_penalty.ops import sum_of_squares
from jacobian_penalty.probes import PROBE_KINDS
from jacobian_penalty.targets import Capture, check_target, uncompiled

__all__ = [
    "AUTO", "METHODS", "MethodInfo", "DEFAULT_FD_STEP", "jacobian_penalty", "jacobian_norms", "per_sample_jacobian",
]


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
            "||J||_F^2, unbiased (forward-mode, random input probes; refused through layer or instance norm)",
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

# Not in METHODS (the estimators themselves, which the app lists and times): "auto" picks one of them.
AUTO = "auto"

# Forward-difference step in input units. Images live in [0, 1], 2-D points are of order 1:
# 1e-2 keeps the O(h) bias small there while float32 rounding error (~1e-7 * |f| / h) stays far
# below it.
DEFAULT_FD_STEP = 1e-2


def jacobian_penalty(
    f: Callable[[Tensor], Any],
    x: Tensor,
    *,
    method: str = "projection",
    num_projections: int = 1,
    create_graph: bool = True,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    fd_step: float = DEFAULT_FD_STEP,
    coupling: str = "raise",
    probes: str = "orthogonal",
    target: str | Callable[[Any], Tensor] | None = None,
    check_independence: bool = True,
    explain: bool = False,
) -> tuple[Any, Tensor] | tuple[Any, Tensor, Plan]:
    """Return (y, penalty): y = f(x) and the batch mean of an estimate of ||J(x_b)||_F^2.

    Args:
        f: the network (or any function) mapping a batch (B, ...) to its output. Samples must not
            interact: see `coupling`.
        x: batched floating-point input, shape (B, ...), B >= 1. If x has a graph (x = feat(z)),
            every method keeps it, so layers upstream of x get their gradients too.
        method: "projection" (default), "exact", "jvp", "fd", or "auto" (the cost model's choice:
            see `explain`); see the package docstring.
        num_projections: random projections / probes / directions averaged per sample
            (ignored by "exact").
        create_graph: keep the graph so the penalty can be backpropagated to f's parameters.
        generator: a seeded torch.Generator makes the random estimators reproducible and leaves
            the global random stream as a plain forward pass would. With None the probes are drawn
            from the global stream (reproducible under torch.manual_seed, and it moves on by them).
        chunk_size: "exact" only: output rows per batched VJP (and reverse mode forced). None
            picks the cheaper direction and a row count that suits the device.
        fd_step: "fd" only: the finite-difference step h in input units.
        coupling: what to do when f mixes the samples of a batch (BatchNorm in training mode, a
            batch_first=False sequence layer fed batch-first data, any op over dim 0): "raise"
            (default) a SampleCouplingError that names it and the fixes, or "warn" and go on.
        probes: "orthogonal" (default): the n probes of a sample form an orthonormal frame, lower
            variance at the same cost and exact at n = C for projection; "iid": independent probes
            (as jacobian_regularizer draws them). Both unbiased.
        target: what to penalise: None (f's output), the name of a submodule of f (its output), or
            a function of f's output (`lambda out: out["penultimate_layer"]`). y is always f's
            full output, for the loss.
        check_independence: on the first call for a module (cached on it), check by behaviour
            that samples do not interact and find layer-norm calls (forward mode is unsafe through
            them). False skips it; the module-type checks stay.
        explain: also return the `jacobian_penalty.costs.Plan` that ran (which method, why, cost).

    Raises:
        ValueError in plain words for bad arguments, an output that is not one tensor with one
        row per sample, a method that cannot run on f (e.g. "jvp" through an op without a
        forward-mode rule, or through layer norm); SampleCouplingError (a ValueError) as above.

    Example:
        >>> logits, term = jacobian_penalty(model, x, method="projection")
        >>> loss = F.cross_entropy(logits, target) + strength * term
        >>> loss.backward()

    The reverse-mode methods differentiate f with respect to a private copy of x that requires
    grad, so a plain `loss.backward()` also computes d loss / d x through f's first layer, which
    nobody reads. `loss.backward(inputs=list(model.parameters()))` skips it.
    """
    check_arguments(x, method, {**METHODS, AUTO: None}, num_projections, chunk_size, fd_step, coupling)
    _check_options(x, method, probes, check_independence, explain)
    f = uncompiled(f)
    check_target(f, target)
    capture = Capture(f, target)
    findings = first_call(f, x, capture, target, coupling, check_independence,
                          forward_mode=method in ("jvp", "exact", AUTO))
    if method == "jvp":
        if findings.forward_mode_unsafe:
            raise ForwardModeUnsafe(list(findings.forward_mode_unsafe))
        y, penalty, sq_plan = _jvp(f, x, num_projections, create_graph, generator, coupling, probes, capture)
    elif method == "fd":
        y, penalty, sq_plan = _finite_difference(f, x, num_projections, create_graph, generator, fd_step,
                                                  coupling, probes, capture)
    else:
        y, penalty, sq_plan = _reverse(f, x, method, num_projections, create_graph, generator, chunk_size,
                                       coupling, probes, capture, findings)
    penalty = penalty if create_graph else penalty.detach()
    return (y, penalty, sq_plan) if explain else (y, penalty)


def _check_options(x: Tensor, method: str, probe_kind: str, check_independence: bool, explain: bool) -> None:
    if probe_kind not in PROBE_KINDS:
        raise ValueError(f"probes must be one of {', '.join(PROBE_KINDS)}, got {probe_kind!r}.")
    for name, value in (("check_independence", check_independence), ("explain", explain)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}.")
    if method == "fd" and x.dtype in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"'fd' cannot run in {x.dtype}: a difference f(x + h d) - f(x) of numbers with 3 significant "
            "digits is mostly rounding (bfloat16 autocast measured 2009 against an exact 3.18). Pass x in "
            "float32 (under autocast, fd runs its passes in float32 itself) or use method='projection'."
        )


def _reverse(f, x, method, n, create_graph, generator, chunk_size, coupling, probe_kind, capture,
             findings: Findings) -> tuple[Any, Tensor, Plan]:
    """projection, exact and auto: one forward pass with x's graph, then VJPs (or JVP columns)."""
    x_in = x if x.requires_grad else x.detach().requires_grad_(True)
    safe = not findings.forward_mode_unsafe
    forward = Forward(f, x_in, double_backward=True, forward_mode=method != "projection" and safe,
                      coupling=coupling, replay=method != "projection", capture=capture)
    vjp_fn = None
    batched = method == "exact" and create_graph and exact.batches_rows(f, x_in, create_graph, chunk_size)
    if batched and functorch_safe(f):  # torch.func's VJP, vmapped over rows (DDP cannot run under it)
        target, vjp_fn = forward.with_vjp(x_in)
    else:
        target = forward(x_in)
    try:
        outputs = target[0].numel()
        chosen = plan(method, inputs=x[0].numel(), outputs=outputs, num_projections=n, forward_mode_safe=safe)
        if chosen.method == "exact":
            sq_norms = exact.squared_norms(forward, x_in, target, create_graph=create_graph, chunk_size=chunk_size,
                                           vjp_fn=vjp_fn, forward_mode_safe=safe)
        else:
            sq_norms = _projection(target.reshape(target.shape[0], -1), x_in, n, create_graph, generator, probe_kind)
    finally:
        forward.finish()
    return forward.output, sq_norms.mean(), chosen


def jacobian_norms(
    f: Callable[[Tensor], Tensor], x: Tensor, *, chunk_size: int | None = None, coupling: str = "raise"
) -> Tensor:
    """Exact per-sample Frobenius norms ||J(x_b)||_F, shape (B,), without a graph (for reporting)."""
    check_arguments(x, "exact", METHODS, 1, chunk_size, DEFAULT_FD_STEP, coupling)
    f = uncompiled(f)
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
    f = uncompiled(f)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        forward = Forward(f, x_in, double_backward=False, forward_mode=False, coupling=coupling, replay=False)
        y = forward(x_in).reshape(x.shape[0], -1)  # (B, C)
        rows = exact._one_hot(y, 0, y.shape[1])  # (C, B, C)
        (vjps,) = torch.autograd.grad(y, x_in, rows, is_grads_batched=True)  # (C, B, ...)
    return vjps.detach().transpose(0, 1)


def _projection(
    y_flat: Tensor, x: Tensor, n: int, create_graph: bool, generator: torch.Generator | None, kind: str
) -> Tensor:
    """C * mean_k ||v_k^T J_b||^2 with v_k uniform on the unit sphere of R^C, shape (B,)."""
    batch, outputs = y_flat.shape
    v = probes.unit(n, batch, outputs, y_flat, generator, kind)  # (n, B, C), unit rows
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


def _jvp(f, x, n, create_graph, generator, coupling, kind, capture) -> tuple[Any, Tensor, Plan]:
    """mean_k ||J_b u_k||^2 with E[u u^T] = I_D (jacobian_penalty.probes): forward mode, one dual
    forward per probe.

    x keeps its graph (x = feat(z): feat gets its gradient through the penalty and the loss).
    Under autocast the passes run in full precision: forward mode fails on mixed dtypes.
    """
    batch, inputs = x.shape[0], x[0].numel()
    us = probes.gaussian_like(n, batch, inputs, x, generator, kind).reshape(n, *x.shape)  # before f draws
    forward = Forward(f, x, double_backward=False, forward_mode=True, coupling=coupling, replay=n > 1,
                      capture=capture, full_precision=True)
    estimates = []
    try:
        for k, u in enumerate(us):
            _, tangent = forward.tangent(x, u, first=k == 0)
            estimates.append(tangent.reshape(batch, -1).pow(2).sum(dim=1))  # (B,)
    except ForwardModeUnavailable as error:
        raise ValueError(str(error)) from error
    finally:
        forward.finish()
    outputs = tangent[0].numel()
    chosen = plan("jvp", inputs=inputs, outputs=outputs, num_projections=n)
    return forward.output, torch.stack(estimates).mean(), chosen


def _finite_difference(f, x, n, create_graph, generator, step, coupling, kind, capture) -> tuple[Any, Tensor, Plan]:
    """D * mean_k ||(f(x + h d_k) - f(x)) / h||^2 with d_k uniform unit directions in R^D.

    Every pass of f sees the random state and the buffers of the first, so dropout keeps one mask
    and spectral_norm one power iteration: a difference of two masks would measure the masks
    (about 25,000 against an exact 0.74 for Dropout(0.5)). Under autocast the passes run in full
    precision: a difference of bfloat16 numbers is mostly rounding.
    """
    batch, inputs = x.shape[0], x[0].numel()
    forward = Forward(f, x, double_backward=False, forward_mode=False, coupling=coupling, replay=True,
                      capture=capture, full_precision=True)
    target = forward(x)
    y_flat = target.reshape(batch, -1)
    directions = probes.unit(n, batch, inputs, x, generator, kind).reshape(n, *x.shape)
    forward.mark()  # the random state to leave behind: after one pass and the draws
    estimates = []
    try:
        for d in directions:
            jd = (forward.again(x + step * d).reshape(batch, -1) - y_flat) / step  # (B, C), ~ J d
            estimates.append(inputs * jd.pow(2).sum(dim=1))
    finally:
        forward.finish()
    chosen = plan("fd", inputs=inputs, outputs=y_flat.shape[1], num_projections=n)
    return forward.output, torch.stack(estimates).mean(), chosen
