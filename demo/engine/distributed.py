"""Data-parallel training under `torchrun`: process group, rank helpers, DDP wrapping, sharding.

    torchrun --nproc_per_node=N -m demo train ...      (gloo on CPU, nccl on CUDA)

The CLI calls `init_from_env` (a no-op without torchrun's environment) and `shutdown`; the engine
(`demo.engine.train`) asks `is_distributed()` and, when a process group exists, trains through `wrap`,
takes its rank's `shard` of every global batch and averages reported metrics with
`reduce_report`. Without a process group every helper is the identity, so a single process runs
exactly as before. Nothing here keeps state of its own: torch.distributed holds the group.

What the Jacobian penalty needs from DistributedDataParallel (measured with 2 gloo ranks in
float64 against one process on the union of the batches; see docs/distributed.md):

1. The penalty's forward must be the DDP module's own call, `ddp(x)`. DDP arms its gradient
   hooks in its forward; a forward through the bare module (e.g. `model.features(x)`) leaves
   every gradient unsynchronised, silently. So `wrap` puts DDP around a view whose forward is
   exactly what the penalty differentiates: the logits, or the features for target="features".
2. Default settings: find_unused_parameters=False and static_graph=False.
   - static_graph=True gives silently unsynchronised gradients: its first-iteration hook
     (`_DDPSink.backward`) fires inside the penalty's own `torch.autograd.grad` and queues the
     delayed all-reduce before any parameter gradient exists.
   - find_unused_parameters=True breaks target="features" (the head is used outside the DDP
     forward: "Expected to mark a variable ready only once") and method="jvp" (`_DDPSink` has no
     forward-mode rule).
   - Both insert `_DDPSink`, which the default mode does not; the default works for all four
     estimators and both targets.
3. Every parameter must receive a gradient in every step. The penalty alone does not give one to
   the output layer's bias (d logits / dx does not depend on it; pytorch/pytorch#47562), nor to
   the head at all for target="features"; the cross-entropy on the same forward does. A loss
   made of the penalty alone must add `0 * y.sum()` or DDP stalls (error on the next step).

`torch.autograd.grad(..., create_graph=True)` with respect to the input never fires DDP's hooks
(they sit on the parameters' gradient accumulators); the one `loss.backward()` reaches every
parameter once, through both the cross-entropy and the double-backward path, and DDP averages
those gradients over ranks as usual.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "TORCHRUN_VARIABLES",
    "init_from_env",
    "shutdown",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "backend",
    "wrap",
    "shard",
    "reduce_report",
    "any_rank",
    "describe",
]

# What torchrun (torch.distributed.run) sets for every worker; all four mean "launched by it".
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init_from_env(device: torch.device, *, timeout: timedelta | None = None) -> bool:
    """Join the process group that torchrun's environment describes; False (and nothing done)
    when not launched by torchrun or when a group already exists (the caller owns it then).

    Backend nccl for a CUDA run (each rank on GPU LOCAL_RANK), gloo otherwise.
    """
    if is_distributed() or not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    options = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", **options)
    return True


def shutdown() -> None:
    """Leave the process group (safe to call when there is none)."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 evaluates, reports and writes files; a single process is its own rank 0."""
    return rank() == 0


def backend() -> str | None:
    return str(dist.get_backend()) if is_distributed() else None


class _Penalised(nn.Module):
    """The part of the model the penalty differentiates, as a module DDP can wrap:
    forward(x) = logits (target "logits") or model.features(x) (target "features").

    Holding the whole model keeps every parameter, the head included, under DDP.
    """

    def __init__(self, model: nn.Module, target: str) -> None:
        super().__init__()
        self.model = model
        self.target = target

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) if self.target == "logits" else self.model.features(x)


def wrap(model: nn.Module, target: str) -> nn.Module:
    """What the training step calls for the penalised output (logits or features).

    Single process: `model` or `model.features`, unchanged. Under a process group: that same
    function behind DistributedDataParallel with its default settings (see the module docstring
    for why find_unused_parameters and static_graph must stay off). DDP shares the parameters:
    the optimizer, evaluation and the saved weights keep using the unwrapped `model`.
    """
    if target not in ("logits", "features"):
        raise ValueError(f"target must be 'logits' or 'features', got {target!r}.")
    if not is_distributed():
        return model if target == "logits" else model.features
    device = next(model.parameters()).device
    return DistributedDataParallel(
        _Penalised(model, target),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=False,
        static_graph=False,
    )


def shard(indices: Tensor, *, of_rank: int | None = None, world: int | None = None) -> Tensor:
    """This rank's equal part of a global batch of indices: (G,) -> (G // world,).

    Every rank draws the same global batch (same seed), so the shards are disjoint and their
    union is the batch one process would take with batch_size * world; a ragged remainder
    (only when the whole training set is smaller than a global batch) is left out.
    """
    of_rank = rank() if of_rank is None else of_rank
    world = world_size() if world is None else world
    per_rank = indices.shape[0] // world
    return indices[of_rank * per_rank : (of_rank + 1) * per_rank]


def reduce_report(sums: Tensor, samples: int) -> tuple[Tensor, int]:
    """Metrics of a report window over all ranks (one all-reduce, at report time only).

    sums: (3,) = (cross-entropy sum, penalty sum, correct count) of this rank's window.
    Returns the cross-entropy and penalty sums averaged over ranks (so dividing by the window's
    step count still gives a per-step mean), the correct counts summed, and samples * world.
    """
    if not is_distributed():
        return sums, samples
    total = sums.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)  # gloo has no AVG
    world = world_size()
    scale = torch.tensor([1.0 / world, 1.0 / world, 1.0], dtype=total.dtype, device=total.device)
    return total * scale, samples * world


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any: ranks must stop at the same step (a time
    budget measured on each rank's own clock could otherwise stop one and hang the others)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def describe(batch_size: int) -> dict[str, object]:
    """The run record's "distributed" entry: batch_size is per rank, one step sees world x it."""
    return {
        "world_size": world_size(),
        "backend": backend(),
        "batch_size_per_rank": batch_size,
        "global_batch_size": batch_size * world_size(),
        "evaluated_on": "rank 0, unwrapped model",
    }
