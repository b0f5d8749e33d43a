"""Training: Train and Stop, the status line, live curves and the live 2-D ‖J(x)‖ field.

`Handlers.train` adapts: UI values -> RunConfig (controls.config_from) -> demo.app.running.follow
-> (session, status, curves, field). `follow` runs the engine in a worker thread, paces updates
and ends with one last update whose status line, curves and session come from the same record;
Stop (StopRequests, shared with the Sweep tab) ends the run's computation, not only its stream.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from demo.app import controls as controls_view
from demo.app import duration, inputs, inspection, limits, plots
from demo.app import session as sessions
from demo.app.controls import POINT_SETS
from demo.app.running import FINAL, follow, visitor, wire_stop
from demo.app.streaming import ACCELERATOR, SKIP, StopRequests
from demo.budget.memory import Estimator
from demo.budget.pace import Paces
from demo.engine import data
from demo.engine.config import RunConfig
from demo.engine.record import COMPLETED, RUNNING, STOPPED, finite
from demo.engine.train import resolve_device

__all__ = ["Handlers", "TrainingView", "status_html", "wire"]

HOW_TO_READ = (
    "**How to read this.** Three panels (side by side; one above the other on a phone). The loss: its two "
    "terms, cross-entropy and λ × R (R the penalty's estimate of ‖J‖_F²), on a log scale. Accuracy: train and "
    "test. ‖J‖_F: the estimator's value on each batch and the exact mean "
    "on a test subset, on a log scale (of the features when the penalty targets them). Compare it with λ = 0: "
    "when the session holds such a run of the same model it is drawn beside, since ‖J‖ can grow while the "
    "model learns even under the penalty, only less. For 2-D data, "
    "the field below colours ‖J(x)‖_F over the plane with the decision boundary and the test points."
)


@dataclass(frozen=True)
class TrainingView:
    train: gr.Button
    stop: gr.Button
    status: gr.HTML
    estimate: gr.HTML  # the estimate in short, beside Train on a phone (demo.app.duration)
    curves: gr.Plot
    field: gr.Plot


@dataclass(frozen=True)
class Handlers:
    """Train and Stop, with what they share. Methods, not functools.partial: gradio finds the
    gr.Request parameter by the function's annotations, which a partial hides."""

    space: limits.Limits
    memory: Estimator
    stops: StopRequests
    paces: Paces
    live: sessions.LiveSessions

    def train(self, session: dict | None, values: dict[str, Any], *, request: gr.Request = None):
        """/train: UI values -> RunConfig -> follow -> (session, status, curves, field)."""
        with inputs.plain_errors():  # a bad value: a toast, and the page stays as it was
            cfg = controls_view.config_from(values, self.space)
        try:
            points = self._admit(cfg)
        except gr.Error as refused:  # valid, but too big or too long here: on the status line too
            yield gr.skip(), f'<div class="jp-status">Not started: {html.escape(refused.message)}</div>', gr.skip(), \
                gr.skip()
            raise
        with self.stops.running(visitor(request)) as stop, inputs.plain_errors():
            session, run_id = self.live.reserve(visitor(request), session)
            for tick in follow(cfg, run_id, stop):
                if tick.kind == SKIP:
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
                    continue
                if tick.kind == FINAL and tick.run["record"]["status"] == COMPLETED:
                    self.paces.observe(cfg, tick.run["record"])  # the next estimate of its kind learns from it
                yield self._update(visitor(request), session, tick.run, points if tick.fresh else None)

    def _admit(self, cfg: RunConfig) -> data.Dataset | None:
        """The run's 2-D test points (None for images), or a refusal in plain words (gr.Error)."""
        with inputs.plain_errors():
            # Before anything is allocated: a run that would not fit is refused, not killed mid-way.
            self.memory.check(cfg, data.class_count(cfg.dataset, cfg.num_classes), resolve_device(cfg.device))
            # ... and one that cannot finish within the app's time limit is refused, not cut.
            duration.refuse_if_too_long(cfg, self.paces.get(cfg))
            return data.load(cfg.dataset, seed=cfg.seed, noise=cfg.noise) if cfg.dataset in POINT_SETS else None

    def _update(self, who: str, session: dict, run: dict, points: data.Dataset | None) -> tuple:
        """(session, status, curves, field): the field is redrawn when `points` are given."""
        field = gr.skip() if points is None else _field(run["record"], run["weights"], points)
        return self.live.with_run(who, session, run), status_html(run), curves(session, run), field


def show_newest(session: dict | None) -> tuple:
    """(status, curves) of the session's newest run, as its last update drew them (after a reload)."""
    runs = (session or {}).get("runs") or []
    if not runs:
        return gr.skip(), gr.skip()
    return status_html(runs[-1]), curves(session, runs[-1])


def curves(session: dict | None, run: dict[str, Any]):
    """The run's training curves, with the session's λ = 0 run of the same model beside it: the
    contrast the penalty makes, on the same axes."""
    drawn = [(plots.run_label(run["record"]), run["record"])]
    baseline = reference_run(session, run)
    if baseline is not None:
        drawn.append((f"λ = 0 (run #{baseline['id']})", baseline["record"]))
    return plots.steps_figure(drawn, plots.TRAINING_PANELS)


def reference_run(session: dict | None, run: dict[str, Any]) -> dict | None:
    """The session's newest finished run that trained the same model without any regulariser
    (λ = 0, same dataset, architecture, target and classes): the Training tab draws it beside a
    penalised run, so a ‖J‖ that rises while λ > 0 is seen against the one it would have had."""
    cfg = run["record"]["config"]
    if cfg["penalty"] == 0:
        return None
    same = ("dataset", "arch", "target", "num_classes", "width", "depth")
    for other in reversed((session or {}).get("runs", [])):
        other_cfg = other["record"]["config"]
        if (other["id"] != run["id"] and other_cfg["penalty"] == 0 and other["record"]["status"] == COMPLETED
                and all(other_cfg.get(k) == cfg.get(k) for k in same)):
            return other
    return None


def status_html(run: dict[str, Any]) -> str:
    """One line: a progress bar, step, samples/s and device while running; the outcome after.
    The numbers are those of the run's last evaluation: the last points of the curves."""
    record = run["record"]
    cfg, final, status = record["config"], record.get("final", {}), record["status"]
    step = final.get("steps", 0)
    device = html.escape(record.get("device") or "…")
    speed = record["history"][-1]["samples_per_s"] if record["history"] else 0.0
    numbers = _numbers(record)
    if status == RUNNING:
        bar = f'<progress value="{step}" max="{cfg["steps"]}"></progress>'
        return (
            f'<div class="jp-status">{bar} Run #{run["id"]}: step {step} of {cfg["steps"]} · '
            f"{speed:,.0f} samples/s · {device}{numbers}</div>"
        )
    if status == STOPPED and record.get("message"):  # stopped by the app's time limit: it says so
        outcome = f"Stopped at step {step} of {cfg['steps']}. {html.escape(record['message'])}"
    elif status == STOPPED:
        outcome = f"Stopped at step {step} of {cfg['steps']}; the partial run is kept (see Runs)"
    elif status == COMPLETED:
        seconds = final.get("run_seconds", final.get("elapsed", 0))  # the whole run, attacks included
        outcome = f"Finished {step} step{'' if step == 1 else 's'} in {seconds:.1f} s"
        if record.get("message"):  # completed, but collapsed to chance: say so beside the numbers
            outcome += f". {html.escape(record['message'])}"
    else:
        outcome = html.escape(record.get("message") or status)
    return f'<div class="jp-status">Run #{run["id"]} on {device}: {outcome.rstrip(".")}{numbers}.</div>'


def _numbers(record: dict[str, Any]) -> str:
    evaluations = record.get("evaluations") or []
    if not evaluations:
        return ""
    last, parts = evaluations[-1], []
    if finite(last.get("test_accuracy")):
        parts.append(f"test accuracy {last['test_accuracy']:.3f}")
    if finite(last.get("jacobian_norm_features")):  # the Jacobian the penalty targets, first
        parts.append(f"mean ‖J‖<sub>F</sub> of the features {last['jacobian_norm_features']:.3g}")
    if finite(last.get("jacobian_norm")):
        of = " of the logits" if "jacobian_norm_features" in last else ""
        parts.append(f"mean ‖J‖<sub>F</sub>{of} {last['jacobian_norm']:.3g}")
    if not parts:
        return ""
    when = "" if last["step"] >= record.get("final", {}).get("steps", 0) else f" (evaluated at step {last['step']})"
    return " · " + " · ".join(parts) + when


def _field(record: dict[str, Any], weights: dict, points: data.Dataset):
    model = inspection.load_model(record, weights)
    step = record["evaluations"][-1]["step"] if record["evaluations"] else 0
    field = inspection.norm_field(model, points.x_test)
    return plots.field_figure([(f"{plots.run_label(record)}, step {step}", field)], inspection.points_of(points))


def _field_visibility(dataset: str):
    return gr.update(visible=dataset in POINT_SETS)


# ---------------------------------------------------------------------------------------------
# Layout


def layout_buttons() -> tuple[gr.Button, gr.Button, gr.HTML, gr.HTML]:
    # "jp-actions": on a phone, fixed at the bottom of the screen (demo.app.page), with the
    # estimate in short: the line under Steps is then inside the folded Settings.
    with gr.Column(elem_id="jp-actions"):
        with gr.Row():
            train_button = gr.Button("Train", variant="primary", scale=2, min_width=80)
            stop = gr.Button("Stop", variant="stop", scale=1, min_width=60)
        status = gr.HTML('<div class="jp-status">Choose settings and press Train.</div>')
        estimate = gr.HTML("", elem_id="jp-estimate-brief")
    return train_button, stop, status, estimate


def layout_tab(defaults: RunConfig, buttons: tuple[gr.Button, gr.Button, gr.HTML]) -> TrainingView:
    # A placeholder figure makes the browser load plotly.js with the page, not at the first
    # update of the first run (measured: the first curve then showed 2 s after the first report).
    curves = gr.Plot(plots.message_figure("Press Train: the curves appear here while the run trains."),
                     label="Training curves")
    gr.Markdown(HOW_TO_READ, elem_classes=["jp-hint"])
    field = gr.Plot(label="‖J(x)‖_F over the input plane, decision boundary and test points",
                    visible=defaults.dataset in POINT_SETS)
    return TrainingView(*buttons, curves, field)


# ---------------------------------------------------------------------------------------------
# Wiring


def wire(view: TrainingView, controls: controls_view.Controls, session: gr.State, space: limits.Limits,
         memory: Estimator, stops: StopRequests, paces: Paces, live: sessions.LiveSessions):
    """Train (api_name "train") and Stop; returns the train event for chaining."""
    handlers = Handlers(space, memory, stops, paces, live)
    # First: the page runs a click's handlers one after another, so Train noted after the run would
    # come too late for a Stop pressed while the run waits its turn (demo.app.ui).
    wire_stop(view.train, view.stop, stops)
    train_event = view.train.click(
        controls_view.config_handler(handlers.train),
        [session, *controls.inputs()],
        [session, view.status, view.curves, view.field],
        api_name="train",
        api_description="Train with a Jacobian penalty; streams status, curves and the 2-D field. All have defaults.",
        # Values reach Handlers.train as sent and RunConfig checks them all: gradio's own number
        # handling fails on NaN, "ten" or [1] with a generic message, and rounds 2.5 steps to 2.
        preprocess=False,
        concurrency_id=ACCELERATOR,
        concurrency_limit=space.concurrency,
        show_progress="minimal",
    )
    controls.dataset.change(_field_visibility, controls.dataset, view.field, api_visibility="private", queue=False,
                            show_progress="hidden")
    return train_event
