"""The exact ||J_b||_F^2 of every sample, computed in whichever direction is cheaper.

||J_b||_F^2 is the sum of the squared norms of J_b's C rows (reverse mode: one VJP e_c^T J per
output) or of its D columns (forward mode: one JVP J e_d per input). Each product costs about
one pass through f, so the cheaper direction is the smaller of C and D: forward mode for
low-dimensional inputs with many outputs (2-D points and 1000 classes: 2 JVPs instead of 1000
VJPs), reverse mode otherwise.

In reverse mode the C rows are taken `rows` at a time. With a graph (training) batched rows go
through functorch (`torch.func.vjp`, vmapped over the one-hot cotangents): about 2x faster than
autograd's `is_grads_batched`. On a CPU that pays only for dense models (Linear layers and
elementwise ops: 10 rows a pass were 10-20% faster than the forum thread's loop), not for
convolutions (about 80% slower) or anything else we could not measure, which take one row per
pass: the thread's loop, with a cheaper square (benchmarks/results/library_comparison_cpu.md). On
a GPU, where one backward pass is launch-bound, and without a graph (reporting), rows are batched
up to a memory bound.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from jacobian_penalty.guards import Forward, ForwardModeUnavailable, functorch_safe
from jacobian_penalty.ops import sum_of_squares

# Bytes that one batched pass may spend on its (rows, B, D) block of VJPs when the rows are
# batched; the graph through f is a multiple of this, so keep it modest.
ROW_BLOCK_BYTES = 32 * 2**20
DENSE_CPU_ROWS = 10  # rows a pass for dense models on a CPU with a graph (measured best of 1, 10, all)
# Modules of a "dense" model: matrix products and elementwise or per-sample ops.
_DENSE = (
    nn.Linear, nn.Bilinear, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.LayerNorm,
    nn.Tanh, nn.ReLU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.Mish, nn.Hardtanh,
    nn.Softmax, nn.LogSoftmax,
)


def batches_rows(f: Callable, x: Tensor, create_graph: bool, chunk_size: int | None) -> bool:
    """Whether reverse mode will take several rows per pass (decided before the forward pass)."""
    if chunk_size is not None:
        return chunk_size > 1
    # On a CPU with a graph only dense models gain, and only through torch.func (not under DDP).
    return not (create_graph and x.device.type == "cpu") or (_dense(f) and functorch_safe(f))


def rows_per_pass(f: Callable, y_flat: Tensor, x: Tensor, create_graph: bool, chunk_size: int | None) -> int:
    batch, outputs = y_flat.shape
    if chunk_size is not None:
        return min(chunk_size, outputs)
    if not batches_rows(f, x, create_graph, chunk_size):
        return 1
    if create_graph and x.device.type == "cpu":
        return min(DENSE_CPU_ROWS, outputs)
    per_row = batch * x[0].numel() * x.element_size()
    return max(1, min(outputs, ROW_BLOCK_BYTES // max(per_row, 1)))


def _dense(f: Callable) -> bool:
    """f is a module (or a module's bound method) built of Linear layers and elementwise ops only."""
    root = f if isinstance(f, nn.Module) else getattr(f, "__self__", None)
    if not isinstance(root, nn.Module):
        return False  # a plain function: nothing to inspect
    leaves = [m for m in root.modules() if not list(m.children())]
    return bool(leaves) and all(isinstance(m, _DENSE) for m in leaves)


def squared_norms(
    forward: Forward,
    x: Tensor,
    y: Tensor,
    *,
    create_graph: bool,
    chunk_size: int | None,
    vjp_fn: Callable[[Tensor], tuple[Tensor, ...]] | None = None,
    forward_mode_safe: bool = True,
) -> Tensor:
    """||J_b||_F^2 for every sample, shape (B,). y = f(x) with x's graph; vjp_fn, if given, is
    torch.func's VJP function of the same pass (used for batched rows with a graph).
    forward_mode_safe: False when f has layer norm (jacobian_penalty.forward_mode): rows only."""
    y_flat = y.reshape(y.shape[0], -1)
    inputs, outputs = x[0].numel(), y_flat.shape[1]
    if inputs < outputs and chunk_size is None and forward_mode_safe:
        try:
            return _by_columns(forward, x, create_graph)
        except ForwardModeUnavailable:
            pass  # an op without a forward-mode rule: reverse mode works everywhere
    rows = rows_per_pass(forward.f, y_flat, x, create_graph, chunk_size)
    if rows > 1 and vjp_fn is not None:
        try:
            return _by_batched_rows(vjp_fn, y, rows, create_graph)
        except RuntimeError:
            pass  # an op without a batching rule for its backward: autograd's loop works everywhere
    return _by_rows(y_flat, x, create_graph, rows)


def _by_rows(y_flat: Tensor, x: Tensor, create_graph: bool, rows: int) -> Tensor:
    """sum over the C rows of ||e_c^T J_b||^2, `rows` VJPs per backward pass, shape (B,)."""
    batch, outputs = y_flat.shape
    total = None
    for start in range(0, outputs, rows):
        stop = min(start + rows, outputs)
        # retain_graph: the caller still backpropagates its loss through y.
        if stop - start == 1:
            grad_outputs = torch.zeros_like(y_flat)  # (B, C): row `start` of every sample
            grad_outputs[:, start] = 1
            (vjp,) = torch.autograd.grad(y_flat, x, grad_outputs, retain_graph=True, create_graph=create_graph)
            vjps = vjp.unsqueeze(0)  # (1, B, ...)
        else:
            (vjps,) = torch.autograd.grad(
                y_flat, x, _one_hot(y_flat, start, stop), retain_graph=True, create_graph=create_graph,
                is_grads_batched=True,
            )  # (K, B, ...)
        part = _detached_unless(create_graph, sum_of_squares(vjps).sum(dim=0))  # (B,)
        total = part if total is None else total + part
    return total


def _by_batched_rows(vjp_fn: Callable, y: Tensor, rows: int, create_graph: bool) -> Tensor:
    """As _by_rows, `rows` cotangents at a time through torch.func.vmap over vjp_fn."""
    batch = y.shape[0]
    y_flat = y.reshape(batch, -1)
    outputs = y_flat.shape[1]
    total = None
    for start in range(0, outputs, rows):
        stop = min(start + rows, outputs)
        cotangents = _one_hot(y_flat, start, stop).reshape(stop - start, *y.shape)  # (K, B, ...)
        (vjps,) = torch.func.vmap(vjp_fn)(cotangents)  # (K, B, ...)
        part = _detached_unless(create_graph, sum_of_squares(vjps).sum(dim=0))
        total = part if total is None else total + part
    return total


def _detached_unless(create_graph: bool, t: Tensor) -> Tensor:
    # Without a graph, each chunk's graph is freed before the next one is built.
    return t if create_graph else t.detach()


def _by_columns(forward: Forward, x: Tensor, create_graph: bool) -> Tensor:
    """sum over the D inputs of ||J_b e_d||^2, one forward-mode pass per input, shape (B,)."""
    batch, inputs = x.shape[0], x[0].numel()
    x_plain = x.detach()
    total = None
    for d in range(inputs):
        tangent = torch.zeros(batch, inputs, dtype=x.dtype, device=x.device)
        tangent[:, d] = 1
        _, column = forward.tangent(x_plain, tangent.reshape(x.shape))  # (B, ...) = J_b e_d
        part = column.reshape(batch, -1).pow(2).sum(dim=1)  # (B,)
        if not create_graph:
            part = part.detach()
        total = part if total is None else total + part
    return total


def _one_hot(y_flat: Tensor, start: int, stop: int) -> Tensor:
    """grad_outputs selecting output rows start..stop-1 of every sample: (K, B, C).

    Materialised, not an expanded view of an identity: the backward's first matmul with a
    stride-0 operand took about 15% longer per row (tanh MLP, C = 100, on a CPU).
    """
    batch, outputs = y_flat.shape
    rows = torch.zeros(stop - start, batch, outputs, dtype=y_flat.dtype, device=y_flat.device)
    rows[:, :, start:stop] = torch.eye(stop - start, dtype=y_flat.dtype, device=y_flat.device).unsqueeze(1)
    return rows
