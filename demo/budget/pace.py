"""How long a run will take here, measured, and how many steps fit a short run.

`measure(cfg)` runs the engine itself for a few steps of `cfg` and times its events: a training
step, one evaluation (test accuracy and the exact ‖J‖ on a test subset) and, if the run measures
robustness, the attacks at its end. `Pace.seconds(steps, evaluations)` then estimates a run, and
`Pace.suggested_steps()` is the step count that fills about TARGET_S seconds: so a default run
takes about as long on the 2-core CPU with a ViT as with an MLP, and trains longer on a GPU.

`Paces` keeps the measurements of one app (they describe this machine, not a visitor), keyed by
what changes the time of a step.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from demo.engine.config import RunConfig
from demo.engine.train import Evaluation, Progress, Robustness, train

__all__ = ["Pace", "Paces", "measure", "nice_steps"]

PROBE_STEPS = 6  # timed after WARMUP_STEPS: the first steps pay for allocation and kernel choice
WARMUP_STEPS = 2
TARGET_S = 15.0  # a default run: long enough to learn, short enough to watch
MIN_STEPS, MAX_STEPS = 100, 3000
CACHE = 64


@dataclass(frozen=True)
class Pace:
    step_s: float  # one training step
    evaluation_s: float  # one evaluation
    robustness_s: float  # the attacks at the end (0 when the run does not measure robustness)

    def seconds(self, steps: int, evaluations: int) -> float:
        return steps * self.step_s + evaluations * self.evaluation_s + self.robustness_s

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


def measure(cfg: RunConfig) -> Pace:
    """Time PROBE_STEPS steps, one evaluation and (if asked) the robustness report of `cfg`."""
    steps = WARMUP_STEPS + PROBE_STEPS
    probe = cfg.replace(steps=steps, report_every=WARMUP_STEPS, eval_every=steps, time_budget=0.0, thorough=False)
    marks: dict[str, float] = {}
    last = time.perf_counter()
    for event in train(probe):
        now = time.perf_counter()
        if isinstance(event, Progress) and event.step == WARMUP_STEPS:
            marks["warm"] = now
        elif isinstance(event, Progress) and event.step == steps:
            marks["trained"] = now
        elif isinstance(event, Evaluation):
            marks["evaluation"] = now - last
        elif isinstance(event, Robustness):
            marks["robustness"] = now - last
        last = now
    if "warm" not in marks or "trained" not in marks:  # diverged in a few steps: time what ran
        return Pace(step_s=0.0, evaluation_s=marks.get("evaluation", 0.0), robustness_s=0.0)
    return Pace(
        step_s=(marks["trained"] - marks["warm"]) / PROBE_STEPS,
        evaluation_s=marks.get("evaluation", 0.0),
        robustness_s=marks.get("robustness", 0.0),
    )


@dataclass
class Paces:
    """The measured Pace of each kind of run this app was asked about, the latest CACHE kinds."""

    _known: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, cfg: RunConfig) -> Pace:
        k = key(cfg)
        with self._lock:
            if k in self._known:
                self._known.move_to_end(k)
                return self._known[k]
        pace = measure(cfg)
        with self._lock:
            self._known[k] = pace
            while len(self._known) > CACHE:
                self._known.popitem(last=False)
        return pace
