"""Training: Train and Stop, the status line, live curves and the live 2-D ||J(x)|| field.

`run_stream(cfg)` is the only part that touches the accelerator: it iterates `train(cfg)` and
yields CPU data (the run record and, when they change, CPU weights). The handler `train_run`
iterates it inside gradio's generator, so Stop (cancels=) closes training at the next yield, and
throttles by wall-clock time: a heavy update (session, status, figures) at most every
HEAVY_INTERVAL_S seconds, `gr.skip()` in between (at most every SKIP_INTERVAL_S) as cheap
cancellation points.

Each heavy update yields the session with the run in progress, its record marked "stopped" by
the Recorder until `Finished` says otherwise: after a Stop, the last yielded session keeps the
partial run.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from demo import data, inspect, limits, plots
from demo.config import ConfigError, RunConfig
from demo.gpu import on_gpu
from demo.memory import Estimator
from demo.record import Recorder, new_record
from demo.train import Evaluation, Finished, resolve_device, train
from demo.views import controls as controls_view
from demo.views import session as sessions

__all__ = ["ACCELERATOR", "HEAVY", "SKIP", "Throttle", "TrainingView", "run_stream", "status_html", "train_run"]

ACCELERATOR = "accelerator"  # concurrency_id of every event that trains or measures
HEAVY_INTERVAL_S = 0.5  # at most ~2 figure updates a second: the browser keeps up, Stop stays quick
# Between heavy updates, an empty update (gr.skip) at most this often: Stop closes the generator
# at its next yield, so this bounds Stop's delay, without a message per progress event.
SKIP_INTERVAL_S = 0.1
RUNNING = "stopped"  # a record's status while it streams (the Recorder's "not finished")


HEAVY, SKIP = "heavy", "skip"
HOW_TO_READ = (
    "**How to read this.** Left: the two terms of the loss, cross-entropy and λ × penalty, on a log scale. "
    "Middle: train and test accuracy. Right: ‖J‖_F, the estimator's value on each batch and the exact mean "
    "on a test subset, on a log scale: the penalty should pull it down while accuracy holds. For 2-D data, "
    "the field below colours ‖J(x)‖_F over the plane with the decision boundary and the test points."
)


@dataclass
class Throttle:
    """Wall-clock pacing of a streaming handler (one per handler call, in its locals): `next()`
    says HEAVY at most every `heavy_s` seconds (and for the final update), SKIP at most every
    `skip_s` in between (an empty update: a cancellation point), else None (no message)."""

    heavy_s: float = HEAVY_INTERVAL_S
    skip_s: float = SKIP_INTERVAL_S
    last_heavy: float = -math.inf
    last_yield: float = -math.inf

    def next(self, *, final: bool = False) -> str | None:
        now = time.monotonic()
        if final or now - self.last_heavy >= self.heavy_s:
            self.last_heavy = self.last_yield = now
            return HEAVY
        if now - self.last_yield >= self.skip_s:
            self.last_yield = now
            return SKIP
        return None


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
    this generator can run in another process (ZeroGPU's spaces.GPU wraps it).
    """
    recorder = Recorder(cfg)
    for event in train(cfg):
        recorder.add(event)
        fresh = isinstance(event, (Evaluation, Finished)) and bool(event.state_dict)
        yield recorder.record, (recorder.state_dict if fresh else None)


def train_run(
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
    *,
    space: limits.Limits,
    memory: Estimator,
):
    """/train: UI values -> RunConfig -> run_stream -> (session, status, curves, field)."""
    values = dict(dataset=dataset, arch=arch, penalty=penalty, method=method, num_projections=num_projections,
                  target=target, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                  robustness=robustness)
    cfg = controls_view.check(values, space)
    try:
        # Before anything is allocated: a run that would not fit is refused, not killed mid-way.
        memory.check(cfg, data.class_count(cfg.dataset, cfg.num_classes), resolve_device(cfg.device))
        points = None  # the test points under the live field, for 2-D data
        if cfg.dataset in controls_view.POINT_SETS:
            points = data.load(cfg.dataset, seed=cfg.seed, noise=cfg.noise)
        session, run_id = sessions.reserve_run(session)
        run = {"id": run_id, "record": new_record(cfg), "weights": {}}
        field, field_stale, pace = gr.skip(), False, Throttle()
        for record, weights in run_stream(cfg):
            if weights is not None:
                run, field_stale = {**run, "weights": weights}, True
            run = {**run, "record": record}
            finished = record["status"] != RUNNING
            update = pace.next(final=finished)
            if update == SKIP:
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            if update != HEAVY:
                continue
            if field_stale and points is not None:
                field, field_stale = _field(record, run["weights"], points), False
            yield (
                sessions.with_run(session, run, space.max_runs),
                status_html(run, running=not finished),
                plots.steps_figure([(plots.run_label(record), record)], plots.TRAINING_PANELS),
                field,
            )
            field = gr.skip()
    except (ConfigError, data.DatasetUnavailable) as exc:
        raise gr.Error(str(exc), print_exception=False) from None


def after_stop(session: dict | None) -> str:
    """The status line once Stop took effect: what the kept partial run holds."""
    try:
        run = sessions.find_run(session, "")
    except sessions.RunNotFound:
        return "<p>Nothing was running.</p>"
    return status_html(run, running=False)


def status_html(run: dict[str, Any], *, running: bool) -> str:
    """One line: a progress bar, step, samples/s and device while running; the outcome after."""
    record = run["record"]
    cfg, final = record["config"], record.get("final", {})
    step = final.get("steps", 0)
    device = html.escape(record.get("device") or "…")
    speed = record["history"][-1]["samples_per_s"] if record["history"] else 0.0
    numbers = _numbers(final)
    if running:
        bar = f'<progress value="{step}" max="{cfg["steps"]}"></progress>'
        return (
            f'<div class="jp-status">{bar} Run #{run["id"]}: step {step} of {cfg["steps"]} · '
            f"{speed:,.0f} samples/s · {device}{numbers}</div>"
        )
    status = record["status"]
    if status == RUNNING:
        outcome = f"Stopped at step {step} of {cfg['steps']}; the partial run is kept (see Runs)"
    elif status == "completed":
        outcome = f"Finished {step} steps in {final.get('elapsed', 0):.1f} s"
        if record.get("message"):  # completed, but collapsed to chance: say so beside the numbers
            outcome += f". {html.escape(record['message'])}"
    else:
        outcome = html.escape(record.get("message") or status)
    return f'<div class="jp-status">Run #{run["id"]} on {device}: {outcome.rstrip(".")}{numbers}.</div>'


def _numbers(final: dict[str, Any]) -> str:
    parts = []
    if _finite(final.get("test_accuracy")):
        parts.append(f"test accuracy {final['test_accuracy']:.3f}")
    if _finite(final.get("jacobian_norm")):
        parts.append(f"mean ||J||<sub>F</sub> {final['jacobian_norm']:.3g}")
    return (" · " + " · ".join(parts)) if parts else ""


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
    with gr.Row():
        train_button = gr.Button("Train", variant="primary", scale=2)
        stop = gr.Button("Stop", variant="stop", scale=1)
    status = gr.HTML('<div class="jp-status">Choose settings and press Train.</div>')
    return train_button, stop, status


def layout_tab(defaults: RunConfig, buttons: tuple[gr.Button, gr.Button, gr.HTML]) -> TrainingView:
    # A placeholder figure makes the browser load plotly.js with the page, not at the first
    # update of the first run (measured: the first curve then showed 2 s after the first report).
    curves = gr.Plot(plots.message_figure("Press Train: the curves appear here while the run trains."),
                     label="Training curves")
    gr.Markdown(HOW_TO_READ, elem_classes=["jp-hint"])
    field = gr.Plot(label="||J(x)||_F over the input plane, decision boundary and test points",
                    visible=defaults.dataset in controls_view.POINT_SETS)
    return TrainingView(*buttons, curves, field)


# ---------------------------------------------------------------------------------------------
# Wiring


def wire(view: TrainingView, controls: controls_view.Controls, session: gr.State, space: limits.Limits,
         memory: Estimator):
    """Train (api_name "train") and Stop; returns (train event, stop event) for chaining."""
    train_event = view.train.click(
        partial(train_run, space=space, memory=memory),
        [session, *controls.inputs()],
        [session, view.status, view.curves, view.field],
        api_name="train",
        api_description="Train with a Jacobian penalty; streams status, curves and the 2-D field. All have defaults.",
        # Values reach train_run as sent and RunConfig checks them all: gradio's own number
        # handling fails on NaN, "ten" or [1] with a generic message, and rounds 2.5 steps to 2.
        preprocess=False,
        concurrency_id=ACCELERATOR,
        concurrency_limit=space.concurrency,
        show_progress="minimal",
    )
    stop_event = view.stop.click(None, None, None, cancels=[train_event])
    controls.dataset.change(_field_visibility, controls.dataset, view.field, api_visibility="private", queue=False,
                            show_progress="hidden")
    return train_event, stop_event
