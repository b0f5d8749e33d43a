"""How long a run will take here, measured, and how many steps fit a short run.

`measure(cfg)` runs the engine itself for a few steps of `cfg` and times its events: a training
step, one evaluation (test accuracy and the exact ‖J‖ on a test subset) and, if the run measures
robustness, the attacks at its end. `Pace.seconds(steps, evaluations)` then estimates a run, and
`Pace.suggested_steps()` is the step count that fills about TARGET_S seconds: so a default run
takes about as long on the 2-core CPU with a ViT as with an MLP, and trains longer on a GPU.

The probe is bounded: it stops after PROBE_CAP_S whatever the settings (exact at 1000 classes
takes seconds a step here), and what it did not reach in that time is extrapolated from what it
did (an evaluation as EVALUATION_STEPS steps, the attacks as ROBUSTNESS_STEPS), and the Pace says
so (`complete` False). Each step is timed on its own, so a Pace carries the spread of its steps
(`step_low_s`, `step_high_s`, without the one fastest and one slowest) and the estimate is a range, not one
optimistic figure.

`Paces` keeps the measurements of one app (they describe this machine, not a visitor), keyed by
what changes the time of a step, for STALE_S seconds: after that the next estimate measures
again, so a machine that got busier (or freer) shows in the numbers.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from demo.engine.config import RunConfig
from demo.engine.train import Evaluation, Progress, Robustness, train

__all__ = ["Pace", "Paces", "measure", "nice_steps"]

PROBE_STEPS = 6  # timed after WARMUP_STEPS: the first steps pay for allocation and kernel choice
WARMUP_STEPS = 2
PROBE_CAP_S = 8.0  # a probe never holds the accelerator longer than this
STALE_S = 120.0  # a measurement older than this is taken again
# What the probe extrapolates when its cap came first, in training steps of the same run:
EVALUATION_STEPS = 10  # test accuracy and the exact ‖J‖ on a test subset
ROBUSTNESS_STEPS = 200  # noise, FGSM, PGD-10, Square and the unbounded PGD on 500 test points
TARGET_S = 15.0  # a default run: long enough to learn, short enough to watch
MIN_STEPS, MAX_STEPS = 100, 3000
CACHE = 64


@dataclass(frozen=True)
class Pace:
    step_s: float  # one training step (the median of the timed steps)
    evaluation_s: float  # one evaluation
    robustness_s: float  # the attacks at the end (0 when the run does not measure robustness)
    step_low_s: float | None = None  # the fastest and slowest timed step: the spread of step_s
    step_high_s: float | None = None
    complete: bool = True  # False: the probe's cap came first and some parts are extrapolated
    measured_at: float = 0.0  # time.monotonic() of the measurement

    def seconds(self, steps: int, evaluations: int) -> float:
        return steps * self.step_s + evaluations * self.evaluation_s + self.robustness_s

    def seconds_range(self, steps: int, evaluations: int) -> tuple[float, float]:
        """(low, high) seconds from the spread of the timed steps (one figure when unknown)."""
        low = self.step_low_s if self.step_low_s is not None else self.step_s
        high = self.step_high_s if self.step_high_s is not None else self.step_s
        rest = evaluations * self.evaluation_s + self.robustness_s
        return steps * low + rest, steps * high + rest

    def suggested_steps(self, evaluations_per_run: int, target_s: float = TARGET_S) -> int:
        """The step count whose run takes about `target_s` (between MIN_STEPS and MAX_STEPS)."""
        budget = max(target_s - self.robustness_s - evaluations_per_run * self.evaluation_s, 0.0)
        return nice_steps(budget / max(self.step_s, 1e-6))


def nice_steps(steps: float) -> int:
    """A round step count: two significant digits, within MIN_STEPS..MAX_STEPS."""
    steps = min(max(steps, MIN_STEPS), MAX_STEPS)
    unit = 10 ** max(0, int(math.log10(steps)) - 1)
    return int(round(steps / unit) * unit)


def key(cfg: RunConfig) -> tuple:
    """What changes the time of a step (not λ's value, the learning rate or the seed)."""
    return (cfg.dataset, cfg.arch, cfg.method, cfg.num_projections, cfg.target, cfg.batch_size, cfg.device,
            cfg.regularizer, cfg.penalty > 0, cfg.num_classes if cfg.dataset == "synthetic" else 0, cfg.robustness,
            cfg.width, cfg.depth)


def measure(cfg: RunConfig, cap_s: float = PROBE_CAP_S) -> Pace:
    """Time up to PROBE_STEPS steps, one evaluation and (if asked) the robustness report of `cfg`,
    stopping after `cap_s` seconds; what the cap cut is extrapolated (see the module docstring)."""
    steps = WARMUP_STEPS + PROBE_STEPS
    probe = cfg.replace(steps=steps, report_every=1, eval_every=steps, time_budget=0.0, thorough=False)
    start = last = time.perf_counter()
    step_times: list[float] = []
    evaluation_s = robustness_s = None
    for event in train(probe, stop=lambda: time.perf_counter() - start > cap_s):
        now = time.perf_counter()
        if isinstance(event, Progress) and event.step > WARMUP_STEPS:
            step_times.append(now - last)
        elif isinstance(event, Evaluation):
            evaluation_s = now - last
        elif isinstance(event, Robustness):
            robustness_s = now - last
        last = now
    if not step_times:  # the cap (or a divergence) came within the warm-up: time what ran
        step_times = [(time.perf_counter() - start) / WARMUP_STEPS]
    step_s = statistics.median(step_times)
    complete = evaluation_s is not None and (robustness_s is not None or not cfg.robustness)
    return Pace(
        step_s=step_s,
        evaluation_s=evaluation_s if evaluation_s is not None else EVALUATION_STEPS * step_s,
        robustness_s=(robustness_s if robustness_s is not None else ROBUSTNESS_STEPS * step_s)
        if cfg.robustness else 0.0,
        step_low_s=_spread(step_times)[0],
        step_high_s=_spread(step_times)[1],
        complete=complete and len(step_times) >= PROBE_STEPS,
        measured_at=time.monotonic(),
    )


def _spread(times: list[float]) -> tuple[float, float]:
    """The range of the timed steps without the single fastest and slowest when there are enough:
    one step preempted by another process on a shared machine must not make the range 10x wide."""
    ordered = sorted(times)
    return (ordered[1], ordered[-2]) if len(ordered) >= 4 else (ordered[0], ordered[-1])


@dataclass
class Paces:
    """The measured Pace of each kind of run this app was asked about, the latest CACHE kinds, each
    for STALE_S seconds. `cached(cfg)` is the measurement if there is a fresh one, else None."""

    _known: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, cfg: RunConfig) -> Pace:
        k = key(cfg)
        with self._lock:
            known = self._known.get(k)
            if known is not None and time.monotonic() - known.measured_at < STALE_S:
                self._known.move_to_end(k)
                return known
        pace = measure(cfg)
        with self._lock:
            self._known[k] = pace
            while len(self._known) > CACHE:
                self._known.popitem(last=False)
        return pace

    def cached(self, cfg: RunConfig) -> Pace | None:
        with self._lock:
            known = self._known.get(key(cfg))
        return known if known is not None and time.monotonic() - known.measured_at < STALE_S else None
