"""The Sweep tab: one run per strength (and per regulariser) with the controls' other settings,
streamed one after another, and the trade-off they draw (demo.engine.sweep, plots.tradeoff_figure).

Every finished run joins the session like a run from Train (the Runs tab lists it). Strength 0
trains once however many regularisers are chosen, spectral normalisation once (it is on or off).
Stop is Train's Stop (StopRequests, demo.app.running.follow): it ends the run in progress, keeps it
(marked stopped) with the finished ones in the session and the table, and the status says so.
"""

from __future__ import annotations

import html
import inspect
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from demo.app import controls as controls_view
from demo.app import duration, inputs, limits, plots
from demo.app import session as sessions
from demo.app.controls import POINT_SETS
from demo.app.running import follow, visitor, wire_stop
from demo.app.streaming import ACCELERATOR, HEAVY, SKIP, StopRequests
from demo.budget.memory import Estimator
from demo.budget.pace import Paces
from demo.engine import data
from demo.engine import sweep as sweeps
from demo.engine.config import MAX_PENALTY, REGULARIZERS
from demo.engine.record import COMPLETED, STOPPED
from demo.engine.train import resolve_device

__all__ = ["Handlers", "SweepView", "parse_strengths", "wire"]

DEFAULT_STRENGTHS = "0, 0.001, 0.01, 0.1, 1"
BASELINE = "baseline"  # how the tables, legends and status lines name a run at strength 0
DEFAULT_EPSILON = sweeps.DEFAULT_EPSILON["image"]
MAX_STRENGTHS = 10
TABLE_COLUMNS = ("regulariser", "strength", "clean acc", "PGD acc", "Square acc", "‖J‖_F", "ms/step", "Pareto")
HOW_TO_READ = (
    "**How to read this.** Two panels (side by side; stacked on a phone). The trade-off: each run is a "
    "point, clean accuracy across, accuracy under PGD at the chosen ε up; the labels are the strengths; "
    "stars and the dotted line are the Pareto front (no other run is better on both). Up and to the right "
    "is better. ‖J‖ against strength: the mean exact ‖J‖_F on a test subset against the strength, both on "
    "log axes (strength 0 sits a decade left of the smallest other one). The ms/step column is the cost per "
    "training step of each run. Strength 0 is trained once (the baseline of every regulariser) and spectral "
    "normalisation once (it is on or off)."
)


@dataclass(frozen=True)
class SweepView:
    strengths: gr.Textbox
    regularizers: gr.CheckboxGroup
    epsilon: gr.Number
    run: gr.Button
    stop: gr.Button
    status: gr.HTML
    figure: gr.Plot
    table: gr.Dataframe


def parse_strengths(value: Any) -> list[float]:
    """ "0, 0.01 0.1" (or a list of numbers) -> [0.0, 0.01, 0.1], duplicates dropped."""
    if isinstance(value, str) and len(value) <= 400:
        items: list[Any] = [v for v in re.split(r"[,\s;]+", value.strip()) if v]
    elif isinstance(value, list) and len(value) <= 4 * MAX_STRENGTHS:
        items = value
    else:
        raise inputs.refuse(f"Strengths: type a few numbers separated by commas, like {DEFAULT_STRENGTHS!r}.")
    numbers = list(dict.fromkeys(inputs.number(v, "Each strength", 0, MAX_PENALTY) for v in items))
    if not numbers or len(numbers) > MAX_STRENGTHS:
        raise inputs.refuse(f"Strengths: give 1 to {MAX_STRENGTHS} different numbers, got {len(numbers)}.")
    return numbers


@dataclass(frozen=True)
class Handlers:
    space: limits.Limits
    memory: Estimator
    stops: StopRequests
    paces: Paces
    live: sessions.LiveSessions

    def sweep(self, session: dict | None, values: dict[str, Any], strengths: Any = DEFAULT_STRENGTHS,
              regularizers: Any = None, epsilon: Any = DEFAULT_EPSILON, *, request: gr.Request = None):
        """/sweep: the controls' settings (λ aside) + strengths, regularisers and the PGD ε of the robust
        accuracy -> one run per distinct (regulariser, strength), streamed as (session, status, figure, table)."""
        configs, epsilon = self._configs(values, strengths, regularizers, epsilon)
        # How long the whole sweep will take, from the same measurements: first, and on every line.
        low, high = self._total_seconds(configs)
        with inputs.plain_errors():
            duration.refuse_if_sweep_too_long(len(configs), low, self.space.max_seconds)
        total = duration.seconds_text(high)
        yield (gr.skip(), f'<div class="jp-sweep-status">{len(configs)} runs, about {total} in total here: '
               "starting the first…</div>", gr.skip(), gr.skip())
        records: list[dict] = []
        # The app's limit covers the sweep as a whole: each run gets what the ones before it left.
        ends = time.monotonic() + self.space.max_seconds
        with self.stops.running(visitor(request)) as stop, inputs.plain_errors():
            for index, cfg in enumerate(configs, start=1):
                left = ends - time.monotonic()
                if left < 1:
                    yield (gr.skip(), _status(index - 1, len(configs), records[-1], done=True, records=records,
                                              epsilon=epsilon, cut=self.space.max_seconds)
                           if records else gr.skip(), gr.skip(), gr.skip())
                    return
                cfg = cfg.replace(time_budget=min(cfg.time_budget or left, left))
                session, run_id = self.live.reserve(visitor(request), session)
                for tick in follow(cfg, run_id, stop):
                    if tick.kind == SKIP:
                        yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
                    elif tick.kind == HEAVY:
                        yield (self.live.with_run(visitor(request), session, tick.run),
                               _status(index, len(configs), tick.run["record"], total_time=total), gr.skip(), gr.skip())
                    else:  # FINAL: finished, or stopped
                        if tick.run["record"]["status"] == COMPLETED:
                            self.paces.observe(cfg, tick.run["record"])
                        session = self.live.with_run(visitor(request), session, tick.run)
                        records.append(tick.run["record"])
                        rows = sweeps.table(records, epsilon)
                        yield (session, _status(index, len(configs), tick.run["record"], done=True, records=records,
                                                epsilon=epsilon),
                               plots.tradeoff_figure(rows, epsilon), _table(rows))
                if stop.is_set():
                    return

    def _configs(self, values, strengths, regularizers, epsilon):
        with inputs.plain_errors():
            base = controls_view.config_from(values, self.space)
        strengths = parse_strengths(strengths)
        if regularizers is not None and not isinstance(regularizers, list):
            raise inputs.refuse(f"Regularisers: send a list of names among {', '.join(REGULARIZERS)}.")
        chosen = [inputs.choice(r, "Regularisers", tuple(REGULARIZERS))
                  for r in (regularizers or [])[:len(REGULARIZERS)]]
        epsilon = inputs.number(epsilon, "PGD ε", 0, 1)
        with inputs.plain_errors():
            configs = sweeps.configs(base.replace(robustness=True), strengths, list(dict.fromkeys(chosen)) or None,
                                     distinct=True)
            for cfg in configs:  # each regulariser's cost differs; the strength does not change memory
                self.memory.check(cfg, data.class_count(cfg.dataset, cfg.num_classes), resolve_device(cfg.device))
                duration.refuse_if_too_long(cfg, self.paces.get(cfg), f"The {_what(cfg.to_dict())} run")
        return configs, epsilon

    def _total_seconds(self, configs) -> tuple[float, float]:
        """(low, high) seconds of the whole sweep, from each run's measured range."""
        ranges = [self.paces.get(cfg).seconds_range(cfg.steps, cfg.evaluations()) for cfg in configs]
        return sum(low for low, _ in ranges), sum(high for _, high in ranges)


def _status(index: int, total: int, record: dict, done: bool = False, records: list[dict] | None = None,
            epsilon: float = DEFAULT_EPSILON, total_time: str = "", cut: float = 0.0) -> str:
    cfg, final = record["config"], record.get("final", {})
    what = _what(cfg)
    if cut:
        return (f'<div class="jp-sweep-status">This app gives one sweep at most {duration.seconds_text(cut)}: it ended '
                f"after run {index} of {total}, and the {index} finished run(s) are kept (see the table and "
                "Runs).</div>")
    if done:
        if record["status"] == STOPPED:
            return (f'<div class="jp-sweep-status">Stopped during run {index} of {total} ({what}) at step '
                    f'{final.get("steps", 0)} of {cfg["steps"]}; the {index - 1} finished run(s) and the partial one '
                    "are kept (see the table and Runs).</div>")
        message = record.get("message") or record["status"]
        ended = "finished" if record["status"] == "completed" and not record.get("message") else html.escape(message)
        tail = " The sweep is complete." if index == total else ""
        note = sweeps.saturation(records or [record], epsilon) if index == total else ""
        note = f" {html.escape(note)}" if note else ""
        return f'<div class="jp-sweep-status">Run {index} of {total} ({what}) {ended.rstrip(".")}.{tail}{note}</div>'
    bar = f'<progress value="{index - 1}" max="{total}"></progress>'
    of_all = f" (about {total_time} for all {total})" if total_time else ""
    return (f'<div class="jp-sweep-status">{bar} Run {index} of {total}{of_all}: {what}, '
            f'step {final.get("steps", 0)} of {cfg["steps"]}</div>')


def _what(cfg: dict) -> str:
    if cfg["penalty"] == 0:
        return f"{BASELINE} (no regulariser)"
    if cfg["regularizer"] in sweeps.ON_OFF:
        return f"{html.escape(cfg['regularizer'])} on"
    return f"{html.escape(cfg['regularizer'])} at strength {cfg['penalty']:g}"


def _table(rows: list[dict]) -> pd.DataFrame:
    def rounded(value: float, digits: int) -> float | None:
        return round(value, digits) if isinstance(value, float) and math.isfinite(value) else None

    return pd.DataFrame(
        [[BASELINE if r["penalty"] == 0 else r["regularizer"], r["penalty"], rounded(r["test_accuracy"], 3),
          rounded(r["robust_accuracy"], 3),
          rounded(r["square_accuracy"], 3), rounded(r["jacobian_norm"], 3), rounded(r["ms_per_step"], 2),
          "★" if r["pareto"] else ""] for r in rows],
        columns=list(TABLE_COLUMNS),
    )


# ---------------------------------------------------------------------------------------------
# Layout


def layout() -> SweepView:
    with gr.Tab("Sweep", id="sweep"):
        gr.Markdown("Train one run per strength with the settings in Settings (λ aside), for one or several "
                    "regularisers, and see which strength buys how much robustness for how much accuracy.")
        with gr.Row():
            strengths = gr.Textbox(DEFAULT_STRENGTHS, label="Strengths (λ; ε for adversarial training)", scale=2)
            epsilon = gr.Number(DEFAULT_EPSILON, label="PGD ε for the robust accuracy", minimum=0, maximum=1)
        regularizers = gr.CheckboxGroup(
            list(REGULARIZERS), value=["jacobian"], label="Regularisers",
            info="; ".join(f"{name}: {meaning}" for name, meaning in REGULARIZERS.items()),
        )
        with gr.Row():
            run = gr.Button("Run sweep", variant="primary", scale=2)
            stop = gr.Button("Stop", variant="stop", scale=1)
        status = gr.HTML('<div class="jp-sweep-status">Choose strengths and press Run sweep.</div>')
        figure = gr.Plot(plots.message_figure("The trade-off appears here as the runs finish."), label="Trade-off")
        gr.Markdown(HOW_TO_READ, elem_classes="jp-hint")
        table = gr.Dataframe(pd.DataFrame(columns=list(TABLE_COLUMNS)), label="The sweep's runs", interactive=False)
    return SweepView(strengths, regularizers, epsilon, run, stop, status, figure, table)


# ---------------------------------------------------------------------------------------------
# Wiring


def wire(view: SweepView, controls: controls_view.Controls, session: gr.State, space: limits.Limits,
         memory: Estimator, stops: StopRequests, paces: Paces, live: sessions.LiveSessions):
    """Run sweep (api_name "sweep") and its Stop; returns the sweep event for chaining."""
    handlers = Handlers(space, memory, stops, paces, live)
    after = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
             for name, default in (("strengths", DEFAULT_STRENGTHS), ("regularizers", None),
                                   ("epsilon", DEFAULT_EPSILON))]
    wire_stop(view.run, view.stop, stops)  # the same Stop as Train's, noted first (see training.wire)
    event = view.run.click(
        controls_view.config_handler(handlers.sweep, after=tuple(after)),
        [session, *controls.inputs(), view.strengths, view.regularizers, view.epsilon],
        [session, view.status, view.figure, view.table],
        api_name="sweep",
        api_description="One run per strength (and regulariser); streams the trade-off figure and table.",
        preprocess=False,  # values as sent, checked by RunConfig and demo.app.inputs
        concurrency_id=ACCELERATOR,
        concurrency_limit=space.concurrency,
        show_progress="minimal",
    )
    controls.dataset.change(_epsilon_for, controls.dataset, view.epsilon, api_visibility="private", queue=False,
                            show_progress="hidden")
    return event


def _epsilon_for(dataset: str) -> float:
    """The PGD ε at which an unregularised model of this kind of data is not already robust."""
    kind = "points" if dataset in POINT_SETS else "image"
    return sweeps.DEFAULT_EPSILON[kind]
