"""Training: Train and Stop, the status line, live curves and the live 2-D ‖J(x)‖ field.

`run_stream(cfg)` is the only part that touches the accelerator: it iterates `train(cfg)` and
yields CPU data (the run record and, when they change, CPU weights). The handler `Handlers.train`
iterates it in a worker thread (demo.app.streaming), so that it sees Stop within a tenth of a
second whatever the model is computing, and throttles by wall-clock time: a heavy update
(session, status, figures) at most every half second, `gr.skip()` in between as cheap
cancellation points for headless clients (job.cancel()).

Stop asks the running handler to end (StopRequests): it closes the stream and sends one last
update whose status line, curves and session all come from the same record, marked "stopped".
"""

from __future__ import annotations

import copy
import html
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from demo.app import controls as controls_view
from demo.app import inspection as inspect
from demo.app import limits, plots
from demo.app import session as sessions
from demo.app.streaming import ACCELERATOR, HEAVY, SKIP, StopRequests, Throttle, in_background
from demo.app.zerogpu import on_gpu
from demo.budget.memory import Estimator
from demo.engine import data
from demo.engine.config import ConfigError, RunConfig
from demo.engine.record import COMPLETED, RUNNING, STOPPED, Recorder, kept, new_record
from demo.engine.train import Evaluation, Finished, resolve_device, train

__all__ = ["Handlers", "TrainingView", "run_stream", "status_html", "wire"]

HOW_TO_READ = (
    "**How to read this.** Left: the two terms of the loss, cross-entropy and λ × penalty, on a log scale. "
    "Middle: train and test accuracy. Right: ‖J‖_F, the estimator's value on each batch and the exact mean "
    "on a test subset, on a log scale: the penalty should pull it down while accuracy holds. For 2-D data, "
    "the field below colours ‖J(x)‖_F over the plane with the decision boundary and the test points."
)


@dataclass(frozen=True)
class TrainingView:
    train: gr.Button
    stop: gr.Button
    status: gr.HTML
    curves: gr.Plot
    field: gr.Plot


@on_gpu  # ZeroGPU: runs in a GPU worker for gpu_duration(cfg) seconds; unchanged elsewhere
def run_stream(cfg: RunConfig) -> Iterator[tuple[dict[str, Any], dict | None]]:
    """train(cfg) folded into its run record: (record, CPU weights or None) after every event.

    Weights come with Evaluation and Finished events only. Everything yielded is CPU data, so
    this generator can run in another process (ZeroGPU's spaces.GPU wraps it). Each record is a
    copy: the Recorder goes on changing its own while the handler draws and stores this one (in
    another thread, see in_background).
    """
    recorder = Recorder(cfg)
    for event in train(cfg):
        recorder.add(event)
        fresh = isinstance(event, (Evaluation, Finished)) and bool(event.state_dict)
        yield copy.deepcopy(recorder.record), (recorder.state_dict if fresh else None)


@dataclass(frozen=True)
class Handlers:
    """Train and Stop, with what they share. Methods, not functools.partial: gradio finds the
    gr.Request parameter by the function's annotations, which a partial hides."""

    space: limits.Limits
    memory: Estimator
    stops: StopRequests

    def train(
        self,
        session: dict | None,
        dataset: str,
        arch: str,
        penalty: float,
        method: str,
        num_projections: int,
        target: str,
        steps: int,
        batch_size: int,
        lr: float,
        seed: int,
        device: str,
        robustness: bool,
        num_classes: int = RunConfig.num_classes,
        request: gr.Request = None,
    ):
        """/train: UI values -> RunConfig -> run_stream -> (session, status, curves, field)."""
        values = dict(dataset=dataset, arch=arch, penalty=penalty, method=method, num_projections=num_projections,
                      target=target, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      robustness=robustness, num_classes=num_classes)
        cfg = controls_view.check(values, self.space)
        visitor = _visitor(request)
        stop = self.stops.begin(visitor)
        try:
            yield from self._stream(session, cfg, stop)
        except (ConfigError, data.DatasetUnavailable) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        finally:
            self.stops.end(visitor, stop)

    def _stream(self, session: dict | None, cfg: RunConfig, stop):
        # Before anything is allocated: a run that would not fit is refused, not killed mid-way.
        self.memory.check(cfg, data.class_count(cfg.dataset, cfg.num_classes), resolve_device(cfg.device))
        points = None  # the test points under the live field, for 2-D data
        if cfg.dataset in controls_view.POINT_SETS:
            points = data.load(cfg.dataset, seed=cfg.seed, noise=cfg.noise)
        session, run_id = sessions.reserve_run(session)
        run = {"id": run_id, "record": new_record(cfg), "weights": {}}
        # Held, not only iterated: closing it waits for the worker's current event (up to seconds
        # of attacks), which must come after the last update, not before it.
        stream = in_background(run_stream(cfg), stop)
        try:
            yield from self._updates(session, run, stream, stop, points)
        finally:
            stream.close()

    def _updates(self, session: dict, run: dict, stream: Iterator, stop, points: data.Dataset | None):
        field_stale, pace = False, Throttle()
        for item in stream:
            if item is not None:
                record, weights = item
                if weights is not None:
                    run, field_stale = {**run, "weights": weights}, True
                run = {**run, "record": record}
            if stop.is_set():
                break
            finished = run["record"]["status"] != RUNNING
            update = pace.next(final=finished)
            if update == SKIP:
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            elif update == HEAVY:
                yield self._update(session, run, points if field_stale else None)
                field_stale = False
            if finished:
                return
        # Stopped (the stream may end first: its worker saw Stop too): one last update, from the
        # record as it stands, so that the status line and the curves show the same numbers.
        yield self._update(session, {**run, "record": kept(run["record"])}, points if field_stale else None)

    def _update(self, session: dict, run: dict, points: data.Dataset | None) -> tuple:
        """(session, status, curves, field): the field is redrawn when `points` are given."""
        field = gr.skip() if points is None else _field(run["record"], run["weights"], points)
        return (
            sessions.with_run(session, run, self.space.max_runs),
            status_html(run),
            plots.steps_figure([(plots.run_label(run["record"]), run["record"])], plots.TRAINING_PANELS),
            field,
        )

    def stop(self, request: gr.Request) -> None:
        """Stop: the session's running Train handler ends within a tick (a queued one, at its start)."""
        self.stops.request(_visitor(request))

    def pressed(self, request: gr.Request) -> None:
        self.stops.pressed(_visitor(request))


def _visitor(request: gr.Request | None) -> str:
    return str(getattr(request, "session_hash", "") or "")


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
    if status == STOPPED:
        outcome = f"Stopped at step {step} of {cfg['steps']}; the partial run is kept (see Runs)"
    elif status == COMPLETED:
        outcome = f"Finished {step} steps in {final.get('elapsed', 0):.1f} s"
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
    if _finite(last.get("test_accuracy")):
        parts.append(f"test accuracy {last['test_accuracy']:.3f}")
    if _finite(last.get("jacobian_norm")):
        parts.append(f"mean ‖J‖<sub>F</sub> {last['jacobian_norm']:.3g}")
    if not parts:
        return ""
    when = "" if last["step"] == record.get("final", {}).get("steps") else f" (evaluated at step {last['step']})"
    return " · " + " · ".join(parts) + when


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _field(record: dict[str, Any], weights: dict, points: data.Dataset):
    model = inspect.load_model(record, weights)
    step = record["evaluations"][-1]["step"] if record["evaluations"] else 0
    field = inspect.norm_field(model, points.x_test)
    return plots.field_figure([(f"{plots.run_label(record)}, step {step}", field)], inspect.points_of(points))


def _field_visibility(dataset: str):
    return gr.update(visible=dataset in controls_view.POINT_SETS)


# ---------------------------------------------------------------------------------------------
# Layout


def layout_buttons() -> tuple[gr.Button, gr.Button, gr.HTML]:
    # "jp-actions": on a phone, fixed at the bottom of the screen (demo.app.page).
    with gr.Column(elem_id="jp-actions"):
        with gr.Row():
            train_button = gr.Button("Train", variant="primary", scale=2, min_width=80)
            stop = gr.Button("Stop", variant="stop", scale=1, min_width=60)
        status = gr.HTML('<div class="jp-status">Choose settings and press Train.</div>')
    return train_button, stop, status


def layout_tab(defaults: RunConfig, buttons: tuple[gr.Button, gr.Button, gr.HTML]) -> TrainingView:
    # A placeholder figure makes the browser load plotly.js with the page, not at the first
    # update of the first run (measured: the first curve then showed 2 s after the first report).
    curves = gr.Plot(plots.message_figure("Press Train: the curves appear here while the run trains."),
                     label="Training curves")
    gr.Markdown(HOW_TO_READ, elem_classes=["jp-hint"])
    field = gr.Plot(label="‖J(x)‖_F over the input plane, decision boundary and test points",
                    visible=defaults.dataset in controls_view.POINT_SETS)
    return TrainingView(*buttons, curves, field)


# ---------------------------------------------------------------------------------------------
# Wiring


def wire(view: TrainingView, controls: controls_view.Controls, session: gr.State, space: limits.Limits,
         memory: Estimator, stops: StopRequests):
    """Train (api_name "train") and Stop; returns the train event for chaining."""
    handlers = Handlers(space, memory, stops)
    train_event = view.train.click(
        handlers.train,
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
    # Outside the accelerator's limit, so they act at once: Stop also reaches a run that is still
    # waiting its turn.
    view.train.click(handlers.pressed, None, None, api_visibility="private", show_progress="hidden",
                     concurrency_limit=None)
    view.stop.click(handlers.stop, None, None, api_visibility="private", show_progress="hidden",
                    concurrency_limit=None)
    controls.dataset.change(_field_visibility, controls.dataset, view.field, api_visibility="private", queue=False,
                            show_progress="hidden")
    return train_event
