"""ZeroGPU on a Hugging Face Space: `on_gpu(fn)` and the GPU time a run asks for, `gpu_duration(cfg)`.

On a ZeroGPU Space every function that touches CUDA is wrapped by `spaces.GPU(duration=...)`: it
runs in a forked worker that holds a GPU for at most `duration` seconds (longer requests wait
longer in ZeroGPU's queue; a call that outlives its duration is killed). Everything a wrapped
generator yields is pickled back to the server, so it must yield CPU data. Everywhere else
(a laptop, a Space on CPU or on a dedicated GPU) `spaces.GPU` returns the function unchanged,
and without the `spaces` package `on_gpu` does the same.

ZeroGPU registers the wrapped functions at start-up: apply `on_gpu` at import time, at module
level (`run_stream = on_gpu(run_stream)`), not inside a handler.

The duration of a run, in seconds (an estimate of GPU time, not a measurement: no constant here
was measured on a ZeroGPU device; the cap below is what bounds a run):

    step_s   = ARCH_STEP_S[arch] * max(1, batch_size / REFERENCE_BATCH) * method_factor
    estimate = WORKER_START_S + SAFETY * (steps * step_s
                                          + evaluations * EVALUATION_PLAIN_STEPS * plain step_s
                                          + robustness * ROBUSTNESS_PLAIN_STEPS * plain step_s)
    duration = ceil(clamp(estimate, MIN_DURATION_S, budget + TAIL_S))

where `method_factor` counts passes relative to a plain cross-entropy step (below),
`evaluations` is one per `eval_every` steps plus the final one, and `budget` is the run's
training time budget, clamped to the Space's JP_MAX_SECONDS (demo.app.limits): training stops itself
at its budget, so the call never needs more than the budget plus TAIL_S for start-up, the final
evaluation and the robustness measurement.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, TypeVar

from demo.app import limits
from demo.budget.costs import step_cost
from demo.engine.config import RunConfig

__all__ = ["gpu_duration", "method_factor", "on_gpu", "on_zero_gpu"]

F = TypeVar("F", bound=Callable[..., Any])

# Seconds per plain training step (forward + backward + Adam) of REFERENCE_BATCH samples on a
# GPU, for the largest inputs each architecture takes here (32x32 colour images). These small
# models are bound by kernel launches, so smaller batches cost about the same and larger ones
# are counted as growing linearly (an over-estimate).
ARCH_STEP_S = MappingProxyType({"mlp": 0.004, "lenet": 0.006, "resnet": 0.015, "vit": 0.012})
UNKNOWN_ARCH_STEP_S = 0.02
REFERENCE_BATCH = 64
EVALUATION_PLAIN_STEPS = 20  # an evaluation (test accuracy, exact ||J|| on a test subset) in plain steps
ROBUSTNESS_PLAIN_STEPS = 800  # noise, FGSM and PGD-10 over a grid on 500 test inputs, in plain steps
WORKER_START_S = 10.0  # fork the worker, CUDA context, data and model to the GPU
SAFETY = 1.5  # the estimate is low on a busy or slower GPU: a killed run loses everything
MIN_DURATION_S = 15
TAIL_S = 30.0  # after the training budget: final evaluation, robustness, start-up


def method_factor(cfg: RunConfig) -> float:
    """Cost of one training step relative to a plain cross-entropy step (demo.budget.costs)."""
    return step_cost(cfg).time_factor


def gpu_duration(cfg: RunConfig, space: limits.Limits | None = None) -> int:
    """Seconds of GPU to ask ZeroGPU for to run `cfg` (see the module docstring for the formula).

    `space` defaults to the limits in the environment (JP_MAX_SECONDS bounds the result).
    """
    space = space or limits.Limits.from_env()
    plain_s = ARCH_STEP_S.get(cfg.arch, UNKNOWN_ARCH_STEP_S) * max(1.0, cfg.batch_size / REFERENCE_BATCH)
    evaluations = cfg.evaluations()
    work_s = (
        cfg.steps * plain_s * method_factor(cfg)
        + evaluations * EVALUATION_PLAIN_STEPS * plain_s
        + (ROBUSTNESS_PLAIN_STEPS * plain_s if cfg.robustness else 0.0)
    )
    estimate = WORKER_START_S + SAFETY * work_s
    budget = limits.time_budget(cfg.time_budget, space)
    return math.ceil(min(max(estimate, MIN_DURATION_S), budget + TAIL_S))


def on_gpu(fn: F, *, duration: Callable[..., int] | None = None) -> F:
    """`fn` wrapped by `spaces.GPU`, asking for `duration(*args, **kwargs)` seconds, by default
    `gpu_duration` of the RunConfig among fn's arguments; `fn` itself where the `spaces` package
    is missing (and, by spaces' own rule, off ZeroGPU)."""
    try:
        import spaces
    except ImportError:
        return fn

    def run_duration(*args: Any, **kwargs: Any) -> int:
        return gpu_duration(_config_among(args, kwargs))

    return spaces.GPU(duration=duration or run_duration)(fn)


def _config_among(args: tuple, kwargs: dict) -> RunConfig:
    for value in (*args, *kwargs.values()):
        if isinstance(value, RunConfig):
            return value
    raise TypeError("on_gpu wraps functions that take a RunConfig argument.")


def on_zero_gpu() -> bool:
    """Whether this process serves a ZeroGPU Space, where `on_gpu` functions run in another process."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "true")
