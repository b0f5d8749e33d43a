"""An estimator's spread over seeds against the exact value: what it costs and how far it strays.

`estimator_spread(f, x, method=..., num_projections=n, probes=...)` evaluates the penalty once per
seed (no graph) and the exact value once, and returns both with the bias, the spread and the time
per call, so a plot of "each method's estimate over many seeds against the exact value" (bias,
spread and time side by side, independent against orthogonal probes) needs nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from jacobian_penalty.costs import Plan
from jacobian_penalty.penalty import jacobian_penalty

__all__ = ["Spread", "estimator_spread"]


@dataclass(frozen=True)
class Spread:
    method: str
    num_projections: int
    probes: str
    exact: float  # the batch mean of ||J_b||_F^2, exact
    estimates: tuple[float, ...]  # one per seed
    seconds_per_call: float  # median wall time of one call without a graph
    plan: Plan  # what ran and what the cost model says it costs

    @property
    def mean(self) -> float:
        return sum(self.estimates) / len(self.estimates)

    @property
    def bias(self) -> float:
        return self.mean - self.exact

    @property
    def std(self) -> float:
        n = len(self.estimates)
        return (sum((e - self.mean) ** 2 for e in self.estimates) / max(n - 1, 1)) ** 0.5

    @property
    def relative_std(self) -> float:
        """The spread of one estimate relative to the exact value."""
        return self.std / self.exact if self.exact else float("nan")


def estimator_spread(
    f: Callable[[Tensor], Any],
    x: Tensor,
    *,
    method: str = "projection",
    num_projections: int = 1,
    probes: str = "orthogonal",
    seeds: Iterable[int] = range(32),
    **options: Any,
) -> Spread:
    """Estimates of the penalty on x for each seed (a torch.Generator seeded with it), and the exact value.

    `options` go to jacobian_penalty (target, fd_step, chunk_size, ...). f's random layers see the
    global random state as it is: put the model in eval mode to see the estimator's spread alone.
    """
    exact = jacobian_penalty(f, x, method="exact", create_graph=False, **options)[1].item()
    values, times, chosen = [], [], None
    for seed in seeds:
        gen = torch.Generator(device=x.device).manual_seed(seed) if x.device.type != "mps" else None
        start = time.perf_counter()
        _, value, chosen = jacobian_penalty(f, x, method=method, num_projections=num_projections, probes=probes,
                                            create_graph=False, generator=gen, explain=True, **options)
        values.append(value.item())  # .item() waits for the device, so the time is the call's
        times.append(time.perf_counter() - start)
    if not values:
        raise ValueError("seeds is empty: give at least one seed.")
    times.sort()
    return Spread(method, num_projections, probes, exact, tuple(values), times[len(times) // 2], chosen)
