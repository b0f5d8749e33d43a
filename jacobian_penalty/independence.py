"""Does f treat the samples of a batch independently? Change one sample and see whether any other
sample's output moves.

A per-sample Jacobian taken through one batched backward pass is right only if output row b
depends on input row b alone. BatchNorm in training mode, attention over the wrong dim, a
reduction over dim 0 or a cross-sample loss inside f all break that silently; this check finds
them by behaviour, whatever module or function causes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from jacobian_penalty.guards import Forward, SampleCouplingError, check_arguments
from jacobian_penalty.penalty import DEFAULT_FD_STEP, METHODS

# Relative change of another sample's output that counts as "moved": far above float32 rounding
# of a row that does not depend on the changed sample (those stay bit-identical in practice).
DEFAULT_TOLERANCE = 1e-5


def check_samples_independent(
    f: Callable[[Tensor], Tensor], x: Tensor, *, sample: int = 0, tolerance: float = DEFAULT_TOLERANCE
) -> None:
    """Raise SampleCouplingError if changing x[sample] moves any other sample's output.

    Runs f twice on x (once with sample `sample` replaced by noise of the batch's scale), with
    the same random state both times (dropout keeps its mask) and without a graph. Buffers of f
    (BatchNorm's running statistics) are put back afterwards when f is a module or a bound method
    of one. Needs at least two samples.
    """
    check_arguments(x, "exact", METHODS, 1, None, DEFAULT_FD_STEP, "raise")
    batch = x.shape[0]
    if batch < 2:
        raise ValueError("check_samples_independent needs a batch of at least 2 samples.")
    if not -batch <= sample < batch:
        raise ValueError(f"sample must index the batch of {batch}, got {sample}.")
    sample %= batch
    changed = x.detach().clone()
    scale = x.detach().float().std().item() or 1.0
    noise = torch.randn(x[sample].shape, dtype=x.dtype, generator=torch.Generator().manual_seed(0), device="cpu")
    changed[sample] = x[sample] + scale * noise.to(x.device)  # a private generator: the caller's stream is kept
    forward = Forward(f, x, double_backward=False, forward_mode=False, coupling="warn", replay=True)
    # coupling="warn", silenced: this check judges by behaviour, and says so below.
    with torch.no_grad(), _buffers_kept(f) as kept, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = forward(x.detach()).reshape(batch, -1)
        kept.restore()  # the second pass sees the same buffers (spectral norm's power iteration, ...)
        after = forward.again(changed).reshape(batch, -1)
        forward.finish()
    moved = (after - before).abs().amax(dim=1)  # (B,)
    moved[sample] = 0
    limit = tolerance * before.abs().max().item() + torch.finfo(before.dtype).tiny
    culprits = torch.nonzero(moved > limit).flatten().tolist()
    if culprits:
        shown = ", ".join(str(i) for i in culprits[:5]) + (" ..." if len(culprits) > 5 else "")
        raise SampleCouplingError(
            f"f mixes the samples of a batch: changing sample {sample} moved the outputs of {len(culprits)} "
            f"other sample(s) ({shown}) by up to {moved.max().item():.3g}. A per-sample Jacobian penalty "
            "assumes each output row depends on its own input row only. Usual causes: BatchNorm in "
            "training mode (use model.eval(), GroupNorm or LayerNorm), an attention or RNN layer with "
            "batch_first=False fed (batch, sequence, features), or a mean/sum over dim 0 inside the model."
        )


class _buffers_kept:  # noqa: N801 - used as a context manager, reads like one
    """Put f's buffers back as they were (BatchNorm updates its running statistics in training mode)."""

    def __init__(self, f: Callable) -> None:
        root = f if isinstance(f, nn.Module) else getattr(f, "__self__", None)
        self.buffers = list(root.buffers()) if isinstance(root, nn.Module) else []

    def __enter__(self) -> _buffers_kept:
        self.saved = [b.detach().clone() for b in self.buffers]
        return self

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, value in zip(self.buffers, self.saved, strict=True):
                buffer.copy_(value)

    def __exit__(self, *exc: object) -> None:
        self.restore()
