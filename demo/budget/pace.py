"""How long a run will take here, measured, and how many steps fit a short run.

`measure(cfg)` runs the engine itself for a few steps of `cfg` and times its events: a training
step, an evaluation (test accuracy and the exact ‖J‖ on a test subset; the faster of two, since
the first use in a process pays a one-time cost) and, if the run measures robustness, the attacks
at its end. `Pace.seconds(steps, evaluations)` then estimates a run, and
`Pace.suggested_steps()` is the step count that fills about TARGET_S seconds: so a default run
takes about as long on the 2-core CPU with a ViT as with an MLP, and trains longer on a GPU.

The probe is bounded: it starts no step that would end past PROBE_CAP_S whatever the settings
(exact at 1000 classes takes seconds a step here). When the cap comes before the evaluation and
the attacks, those are timed apart on a run of two plain steps (they cost the same whatever the
training method), within the cap again; only what that did not reach either is extrapolated (an
evaluation as EVALUATION_STEPS steps, the attacks as ROBUSTNESS_STEPS), and the Pace says so
(`complete` False). Each step is timed on its own, so a Pace carries the spread of its steps
(`step_low_s`, `step_high_s`, without the one fastest and one slowest) and the estimate is a range, not one
optimistic figure.

`Paces` keeps the measurements of one app (they describe this machine, not a visitor), keyed by
what changes the time of a step, for STALE_S seconds: after that the next estimate measures
again, so a machine that got busier (or freer) shows in the numbers. A probe sees the machine for
a few seconds; a run a minute later meets another load, and pays what the probe does not (building
the run, the page's own updates). So `Paces.observe` takes each run of the kind that finished in
the app: its step time as the run measured it, and the seconds it took beyond its steps,
evaluations and attacks. Later estimates of the kind span both the probe's range and that run
(`Pace.observed_step_s`, `Pace.extra_s`), until the kind is measured again.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from demo.engine.config import RunConfig
from demo.engine.train import Evaluation, Robustness, train

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
    complete: bool = True  # False: the cap came first and the evaluation or the attacks are extrapolated
    timed_steps: int = PROBE_STEPS  # how many steps step_s comes from (fewer when the cap came first)
    measured_at: float = 0.0  # time.monotonic() of the measurement
    # From the last run of this kind that finished in the app (Paces.observe), None before one:
    observed_step_s: float | None = None  # its step time, as the run itself measured it
    # The seconds a run takes beyond its steps, evaluations and attacks: the probe's own start, until
    # a run of the kind finished in the app says what it took.
    extra_s: float = 0.0
    # The last run in the app of any kind took this multiple of its probe's step time (1: none yet).
    slowdown: float = 1.0

    def seconds(self, steps: int, evaluations: int) -> float:
        step = self.observed_step_s if self.observed_step_s is not None else self.step_s
        return steps * step + evaluations * self.evaluation_s + self.robustness_s + self.extra_s

    def step_range(self) -> tuple[float, float]:
        """(fastest, slowest) step time: the spread of the timed steps (step_s when unknown), widened
        to the step time of the last run of the kind when one finished here."""
        seen = [self.step_low_s if self.step_low_s is not None else self.step_s,
                self.step_high_s if self.step_high_s is not None else self.step_s, self.step_s * self.slowdown]
        if self.observed_step_s is not None:
            seen.append(self.observed_step_s)
        return min(seen), max(seen)

    def seconds_range(self, steps: int, evaluations: int) -> tuple[float, float]:
        """(low, high) seconds: `step_range` times the steps, and the rest."""
        low, high = self.step_range()
        rest = evaluations * self.evaluation_s + self.robustness_s + self.extra_s
        return steps * low + rest, steps * high + rest

    def suggested_steps(self, evaluations_per_run: int, target_s: float = TARGET_S) -> int:
        """The step count whose run takes about `target_s` (between MIN_STEPS and MAX_STEPS)."""
        budget = max(target_s - self.robustness_s - evaluations_per_run * self.evaluation_s - self.extra_s, 0.0)
        step = self.observed_step_s if self.observed_step_s is not None else self.step_s
        return nice_steps(budget / max(step, 1e-6))


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
    """Time up to PROBE_STEPS steps, two evaluations and (if asked) the robustness report of `cfg`,
    within about `cap_s` seconds; what the cap cut is measured apart or extrapolated (see the module
    docstring)."""
    steps = WARMUP_STEPS + PROBE_STEPS
    # Two evaluations: the first use of the evaluation's Jacobian in a process pays a one-time cost
    # (features at 300 steps: 1.35 s, then 0.3 s each), which a run's nine evaluations do not.
    probe = cfg.replace(steps=steps, report_every=1, eval_every=steps // 2, time_budget=0.0, thorough=False)
    clock = _StepClock(cap_s)
    evaluation_s, robustness_s = _after_training(train(probe, stop=clock), steps, clock)
    # The first steps pay for allocation and kernel choice (the first, also for building the run);
    # a probe cut before the timed steps keeps what it has, the latest steps first.
    step_times = clock.steps[WARMUP_STEPS:] or clock.steps[1:] or clock.steps or [clock.last - clock.start]
    step_s = statistics.median(step_times)
    # What a run pays before its steps find their pace (building the model, loading the data, the
    # independence check, the first step's allocations): the first interval beyond a step's time.
    start_s = max(clock.steps[0] - step_s, 0.0) if len(clock.steps) > 1 else 0.0
    if evaluation_s is None or (cfg.robustness and robustness_s is None):
        evaluation_s, robustness_s = _after_training_apart(cfg, cap_s, evaluation_s, robustness_s)
    complete = evaluation_s is not None and (robustness_s is not None or not cfg.robustness)
    return Pace(
        step_s=step_s,
        evaluation_s=evaluation_s if evaluation_s is not None else EVALUATION_STEPS * step_s,
        robustness_s=(robustness_s if robustness_s is not None else ROBUSTNESS_STEPS * step_s)
        if cfg.robustness else 0.0,
        step_low_s=_spread(step_times)[0],
        step_high_s=_spread(step_times)[1],
        complete=complete,
        timed_steps=len(step_times),
        measured_at=time.monotonic(),
        extra_s=start_s,
    )


class _StepClock:
    """The probe's `stop`. The engine asks it once after every step, so its calls time the steps
    whatever the run reports; the interval that holds an evaluation is not a step and is left out
    (`evaluated`). It says stop before a step that would end past the cap. After training
    (`training` False) the attacks ask it between their levels, where the plain cap applies."""

    def __init__(self, cap_s: float) -> None:
        self.cap_s = cap_s
        self.start = self.last = time.perf_counter()
        self.steps: list[float] = []
        self.training = True
        self.evaluated = False

    def __call__(self) -> bool:
        now = time.perf_counter()
        if not self.training:
            return now - self.start > self.cap_s
        if not self.evaluated:
            self.steps.append(now - self.last)
        self.evaluated, self.last = False, now
        return now - self.start + (self.steps[-1] if self.steps else 0.0) > self.cap_s


def _after_training(events, last_step: int, clock: _StepClock | None = None) -> tuple[float | None, float | None]:
    """(evaluation seconds, robustness seconds) of a run's events, None for what it did not reach.
    Of several evaluations, the fastest: the first may pay for first use. `clock` learns when an
    evaluation falls between two steps and when training is over (the evaluation at `last_step`)."""
    evaluations, robustness_s = [], None
    last = time.perf_counter()
    for event in events:
        now = time.perf_counter()
        if isinstance(event, Evaluation):
            evaluations.append(now - last)
            if clock is not None:
                clock.evaluated = True
                clock.training = event.step < last_step
        elif isinstance(event, Robustness):
            robustness_s = now - last
        last = now
    return (min(evaluations) if evaluations else None), robustness_s


def _after_training_apart(cfg: RunConfig, cap_s: float, evaluation_s: float | None,
                          robustness_s: float | None) -> tuple[float | None, float | None]:
    """The evaluation and the attacks of `cfg` timed on a run of two plain steps (and evaluations),
    when the probe's cap came before them. Neither depends on how the model was trained (the
    evaluation's exact ‖J‖ and the attacks cost the same after a penalised step or a plain one), and
    extrapolating them from a penalised step made them cost what exact's steps cost: 25 min of
    attacks for exact at 1000 classes, whose attacks take about a second."""
    # λ = 0 reports the method's estimate of ‖J‖ on its report step: projection's costs little.
    two = cfg.replace(penalty=0.0, method="projection", steps=2, report_every=1, eval_every=1, time_budget=0.0,
                      thorough=False)
    start = time.perf_counter()
    found = _after_training(train(two, stop=lambda: time.perf_counter() - start > cap_s), two.steps)
    return (evaluation_s if evaluation_s is not None else found[0],
            robustness_s if robustness_s is not None else found[1])


def _spread(times: list[float]) -> tuple[float, float]:
    """The range of the timed steps without the single fastest and slowest when there are enough:
    one step preempted by another process on a shared machine must not make the range 10x wide."""
    ordered = sorted(times)
    return (ordered[1], ordered[-2]) if len(ordered) >= 4 else (ordered[0], ordered[-1])


@dataclass
class Paces:
    """The measured Pace of each kind of run this app was asked about, the latest CACHE kinds, each
    for STALE_S seconds. `cached(cfg)` is the measurement if there is a fresh one, else None.

    Two things no single probe sees. The first probe of a process pays one-time costs (imports,
    the allocator's growth: 0.8 s on a run of 1.3 s here) that no later run pays: it is taken twice,
    the first thrown away. And a run in the app pays what its probe does not (the page's updates
    while it trains, its figures sent to the browser): every new measurement, of a new kind or of
    one measured again, counts what the last finished run of any kind showed (`_learned`: the
    seconds it took beyond its parts, and its step time over its probe's)."""

    _known: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _warm: bool = False
    _learned: tuple[float, float] | None = None  # (extra seconds, slowdown) of the last finished run

    def get(self, cfg: RunConfig) -> Pace:
        k = key(cfg)
        with self._lock:
            known = self._known.get(k)
            if known is not None and time.monotonic() - known.measured_at < STALE_S:
                self._known.move_to_end(k)
                return known
            first, self._warm = not self._warm, True
        if first:
            measure(cfg)
        pace = measure(cfg)
        with self._lock:
            if self._learned is not None:
                extra, slowdown = self._learned
                pace = dataclasses.replace(pace, extra_s=max(pace.extra_s, extra), slowdown=slowdown)
            self._known[k] = pace
            while len(self._known) > CACHE:
                self._known.popitem(last=False)
        return pace

    def observe(self, cfg: RunConfig, record: dict) -> None:
        """A run of `cfg` finished in the app, whole (`record`, with its `run_seconds`): later estimates
        of its kind include its step time and what it took beyond its parts. Nothing when its kind
        is not measured (or no longer), or the record lacks what this needs."""
        windows = [cfg.batch_size / r["samples_per_s"] for r in record.get("history", ())
                   if r.get("samples_per_s", 0) > 0]
        seconds = record.get("final", {}).get("run_seconds")
        if not windows or seconds is None:
            return
        step_s = statistics.median(windows)  # a window that held an evaluation is the odd one out
        k = key(cfg)
        with self._lock:
            known = self._known.get(k)
            if known is None or time.monotonic() - known.measured_at >= STALE_S:
                return
            parts = cfg.steps * step_s + cfg.evaluations() * known.evaluation_s + known.robustness_s
            extra = max(seconds - parts, 0.0)
            self._known[k] = dataclasses.replace(known, observed_step_s=step_s, extra_s=extra)
            self._learned = (extra, step_s / max(known.step_s, 1e-9))

    def cached(self, cfg: RunConfig) -> Pace | None:
        with self._lock:
            known = self._known.get(key(cfg))
        return known if known is not None and time.monotonic() - known.measured_at < STALE_S else None
