"""How long the chosen run will take, said under Steps before Train; a fitting step count when the
visitor picks another dataset or architecture.

Both come from demo.budget.pace: the engine runs a few steps of the chosen settings here and times them
(at most pace.PROBE_CAP_S; the app keeps a measurement for pace.STALE_S). The probe waits for the
accelerator like any run, so it never slows a run in progress, nor is its timing disturbed by one.
While it measures, the line says so. The estimate is a range from the spread of the timed steps.
`refuse_if_too_long` is what Train and Sweep ask before they start: a run that cannot finish
within the app's time limit, even at the fast end of its range, is refused with the steps that fit.
"""

from __future__ import annotations

import html
import inspect
import time
from typing import Any

import gradio as gr

from demo.app import controls as controls_view
from demo.app import limits
from demo.app.fairness import measurement
from demo.app.streaming import ACCELERATOR
from demo.budget import pace as pace_module
from demo.budget.memory import Estimator
from demo.budget.pace import Pace, Paces
from demo.engine import data
from demo.engine.config import ConfigError, RunConfig
from demo.engine.train import resolve_device

__all__ = ["adopt", "describe", "estimate", "fit", "fitting_steps", "refuse_if_too_long", "seconds_text", "wire"]

NO_ESTIMATE = "No estimate: see the line under Steps in Settings."  # beside Train, when the line says why

# The settings that change how long a run takes (λ only by being 0 or not).
TIMED_FIELDS = ("dataset", "arch", "penalty", "method", "num_projections", "target", "steps", "batch_size",
                "device", "robustness", "num_classes")


def _config(values: dict[str, Any], space: limits.Limits) -> RunConfig:
    return controls_view.config_from(values, space)


def _pace(cfg: RunConfig, paces: Paces, memory: Estimator) -> Pace:
    # A run that would not fit is not probed either: the check raises ConfigError first.
    memory.check(cfg, data.class_count(cfg.dataset, cfg.num_classes), resolve_device(cfg.device))
    return paces.get(cfg)


def describe(cfg: RunConfig, pace: Pace) -> str:
    device = "GPU" if resolve_device(cfg.device).type == "cuda" else "CPU"
    span = _span(cfg, pace)
    text = f"{cfg.dataset} · {cfg.arch} · {cfg.steps} steps: about {span} here on the {device} "
    # Which penalty: two lines for "digits · mlp · 300 steps" read as two numbers that disagree.
    penalty = f"{cfg.method} on the {cfg.target}" if cfg.penalty > 0 and cfg.regularizer == "jacobian" else \
        ("no penalty" if cfg.penalty == 0 else cfg.regularizer.replace("_", " "))
    text += f"({penalty}: {_ms(pace.step_s)} a step"
    if cfg.robustness:
        text += f", {_duration(pace.robustness_s)} for the robustness checks"
    steps = "one step" if pace.timed_steps == 1 else "a few steps"
    when = _ago(pace.measured_at)
    text += f"; measured on {steps} {when}" if pace.complete else \
        f"; {steps} measured {when}, the evaluations and attacks extrapolated from them"
    if pace.observed_step_s is not None:
        text += (f"; the last run like it here: {_ms(pace.observed_step_s)} a step, and {_duration(pace.extra_s)} "
                 "to start and finish")
    elif pace.slowdown != 1.0:  # in words a newcomer reads ("0.68× its probe's step time" was not)
        pace_word = (f"{1 / pace.slowdown:.2g}× as fast" if pace.slowdown < 1 else f"{pace.slowdown:.2g}× as slow")
        text += (f"; counted in: the last run here stepped {pace_word} as its own quick measurement, and took "
                 f"{_duration(pace.extra_s)} to start and finish")
    text += ")"
    if _beyond(cfg, pace, 0):
        text += f". {_past(cfg, pace, 0).capitalize()}, so Train will refuse it: {_fit(fitting_steps(cfg, pace))}"
    elif _beyond(cfg, pace, 1):
        text += f". {_past(cfg, pace, 1).capitalize()}: it may be cut short"
    return text + "."


def _span(cfg: RunConfig, pace: Pace) -> str:
    """The run's range as the page writes it: "4.6 s to 5.1 s", or one figure when both ends read alike."""
    low, high = (_duration(end) for end in pace.seconds_range(cfg.steps, cfg.evaluations()))
    return low if low == high else f"{low} to {high}"


def _ms(seconds: float) -> str:
    """A step's time: 4.93 ms, 312 ms, 6.6 s."""
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else _duration(seconds)


def _ago(measured_at: float) -> str:
    """When a measurement was taken, as the line says it: "just now" within a few seconds."""
    age = time.monotonic() - measured_at
    return "just now" if age < 10 else f"{_duration(age)} ago"


def fitting_steps(cfg: RunConfig, pace: Pace) -> int:
    """The most steps whose run fits cfg's time budget at the fast end of its range (at least 1):
    the whole run within the budget, its training within the training share. Counted for the run
    that Steps set to that count would make, with its own evaluations (a run of 30 steps evaluates
    more often than one of 2000: offered for the evaluations of the longer run, "32 steps fit" was
    itself refused)."""
    def run_of(steps: int) -> RunConfig:
        return cfg.replace(steps=steps, **controls_view.schedule(steps, cfg.dataset))

    step = pace.step_range()[0]
    spare = min(cfg.time_budget - pace.robustness_s, limits.training_seconds(cfg)) - pace.extra_s
    # No evaluation at all: more never fits; nor more than asked, which does not fit.
    steps = max(1, min(int(spare / max(step, 1e-9)), cfg.steps))
    while steps > 1 and _beyond(run_of(steps), pace, 0):
        steps -= max(1, steps // 50)
    return steps


def _beyond(cfg: RunConfig, pace: Pace, end: int) -> bool:
    """Whether the run passes its budget at one end of its range (0: fast, 1: slow), as a whole or
    in its training (the engine stops training at limits.training_seconds)."""
    return _past(cfg, pace, end) is not None


def _past(cfg: RunConfig, pace: Pace, end: int) -> str | None:
    """Which of the app's limits the run passes at one end of its range, in words, or None."""
    if cfg.time_budget <= 0:
        return None
    total = pace.seconds_range(cfg.steps, cfg.evaluations())[end]
    if total > cfg.time_budget:
        return f"this app stops a run after {_duration(cfg.time_budget)}"
    if total - pace.robustness_s - pace.extra_s > limits.training_seconds(cfg):
        return (f"this app stops training after {_duration(limits.training_seconds(cfg))} "
                f"(of a run's {_duration(cfg.time_budget)}, the rest kept for the final checks)")
    return None


def _fit(steps: int) -> str:
    return "about 1 step fits" if steps == 1 else f"about {steps} steps fit"


def refuse_if_too_long(cfg: RunConfig, pace: Pace, what: str = "This run") -> None:
    """ConfigError in plain words when `cfg` cannot finish within its time budget even at the fast
    end of its measured range: refused before it starts, not cut after minutes."""
    low, _ = pace.seconds_range(cfg.steps, cfg.evaluations())
    if _beyond(cfg, pace, 0):
        cheaper = "" if cfg.method == "projection" else \
            "choose a cheaper method (projection does not grow with the outputs), "
        raise ConfigError(
            f"{what} would take about {_duration(low)} here ({_ms(pace.step_s)} a step, measured "
            f"{_ago(pace.measured_at)}), and {_past(cfg, pace, 0)}. "
            f"{_fit(fitting_steps(cfg, pace)).capitalize()}; or {cheaper}run it on your own machine "
            "(python -m demo train).")


def refuse_if_sweep_too_long(runs: int, low_s: float, limit_s: float) -> None:
    """ConfigError when a sweep's runs together cannot finish within the app's limit for one
    request (JP_MAX_SECONDS) even at the fast end of their measured ranges."""
    if limit_s > 0 and low_s > limit_s:
        raise ConfigError(
            f"These {runs} runs would take about {_duration(low_s)} here together, and this app gives one sweep "
            f"at most {_duration(limit_s)}. Choose fewer strengths or regularisers, or fewer steps; or run the "
            "sweep on your own machine (python -m demo sweep).")


def seconds_text(seconds: float) -> str:
    """A duration as the page writes it: 4.6 s, 38 s, 3 min."""
    return _duration(seconds)


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def brief(cfg: RunConfig, pace: Pace) -> str:
    """The estimate in one short sentence, beside Train on a phone (the whole line is in Settings)."""
    span = _span(cfg, pace)
    text = f"Estimated: about {span} here"
    if _beyond(cfg, pace, 0):
        text += f", but {_past(cfg, pace, 0)}: {_fit(fitting_steps(cfg, pace))}"
    elif _beyond(cfg, pace, 1):
        text += f"; {_past(cfg, pace, 1)}, so it may be cut short"
    return text + "."


def estimate(*values: Any, space: limits.Limits, paces: Paces, memory: Estimator):
    """(line under Steps, brief line beside Train): "Measuring…" first when a probe must run, then
    the estimate. Never an error toast: while someone types, a half-made value is normal."""
    try:
        cfg = _config(dict(zip(TIMED_FIELDS, values, strict=True)), space)
        if paces.cached(cfg) is None:
            yield _lines(f"Measuring how long {cfg.dataset} · {cfg.arch} · {cfg.method} takes here "
                         f"(a few steps, at most {pace_module.PROBE_CAP_S:g} s)…", "Measuring how long this run takes…")
        pace = _pace(cfg, paces, memory)
        yield _lines(describe(cfg, pace), brief(cfg, pace))
    except (ConfigError, data.DatasetUnavailable) as exc:
        yield _lines(f"No estimate: {exc}", NO_ESTIMATE)


def fit(*values: Any, space: limits.Limits, paces: Paces, memory: Estimator):
    """Another dataset or architecture: (proposal, line, brief line). The proposal is the count that
    fits a short run, or None where Steps no longer holds the page's last suggestion (the last value;
    at first the default): a count the visitor typed, or a shared link set, is theirs and stays.
    `adopt` then decides with Steps as it is when the measurement is done."""
    *values, suggested = values
    chosen = dict(zip(TIMED_FIELDS, values, strict=True))
    try:
        cfg = _config(chosen, space)
        pace = _pace(cfg, paces, memory)
        if not _same(chosen["steps"], suggested):
            return None, *_lines(describe(cfg, pace), brief(cfg, pace))
        steps = min(pace.suggested_steps(cfg.evaluations()), space.max_steps)
        fitted = _config({**chosen, "steps": steps}, space)
        return steps, *_lines(describe(fitted, pace), brief(fitted, pace))
    except (ConfigError, data.DatasetUnavailable) as exc:
        return None, *_lines(f"No estimate: {exc}", NO_ESTIMATE)


def adopt(steps: Any, suggested: Any, proposal: int | None):
    """(steps, suggested) once `fit` has measured: Steps takes the proposal only if it still holds
    the page's last suggestion. The measurement takes seconds, and a count typed meanwhile must win:
    this runs as its own event after fit's, so it reads Steps as it is then, not as it was."""
    if proposal is None or not _same(steps, suggested):
        return gr.skip(), gr.skip()
    return proposal, proposal


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _lines(text: str, short: str) -> tuple[str, str]:
    return (f'<div class="jp-hint jp-estimate">{html.escape(text)}</div>',
            f'<div class="jp-hint jp-brief">{html.escape(short)}</div>')


def wire(controls: controls_view.Controls, space: limits.Limits, paces: Paces, memory: Estimator,
         load: Any, brief_line: Any, after: tuple = ()) -> None:
    """The line under Steps (and `brief_line`, beside Train) on load, on every change of what
    times a run, and after each event in `after` (Train, Sweep: the estimate learns from the runs
    they finish); Steps fitted to a new dataset or architecture."""
    inputs = [getattr(controls, name) for name in TIMED_FIELDS]
    common = dict(api_visibility="private", concurrency_id=ACCELERATOR, trigger_mode="always_last",
                  show_progress="hidden")
    deps = dict(space=space, paces=paces, memory=memory)
    suggested = gr.State(RunConfig.steps, time_to_live=space.session_ttl)  # the count the page last put in Steps
    proposal = gr.State(None, time_to_live=space.session_ttl)  # fit's count, until adopt takes it or not
    gr.on([controls.dataset.change, controls.arch.change], _bind(fit, deps), [*inputs, suggested],
          [proposal, controls.estimate, brief_line], **common
          ).then(adopt, [controls.steps, suggested, proposal], [controls.steps, suggested], api_visibility="private",
                 show_progress="hidden", concurrency_limit=None)
    changes = [getattr(controls, name).change for name in TIMED_FIELDS if name not in ("dataset", "arch")]
    gr.on([load, *changes], _bind(estimate, deps), inputs, [controls.estimate, brief_line], **common)
    for event in after:
        event.then(_bind(estimate, deps), inputs, [controls.estimate, brief_line], api_visibility="private",
                   concurrency_id=ACCELERATOR, show_progress="hidden")


def _bind(fn, deps):
    """`fn` with its dependencies, marked as a measurement for the queue's fairness."""
    if inspect.isgeneratorfunction(fn):  # gradio streams a generator's updates: keep it one
        def streaming(*values):
            yield from fn(*values, **deps)

        return measurement(streaming)

    def handler(*values):
        return fn(*values, **deps)

    return measurement(handler)
