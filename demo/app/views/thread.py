""""Why did .backward() not learn?": the forum thread's penalty next to ours, on the same model,
data and seed (the controls' dataset, architecture, seed, batch size, learning rate and
estimator), with the numbers that show what goes wrong. The logic is demo.evaluation.thread."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any

import gradio as gr

from demo.app import controls as controls_view
from demo.app import inputs, limits, plots
from demo.app.running import deadline
from demo.app.streaming import ACCELERATOR, HEAVY, SKIP, Throttle
from demo.app.zerogpu import gpu_duration, on_gpu
from demo.budget.memory import Estimator
from demo.engine import data
from demo.engine.config import RunConfig
from demo.engine.train import build_model, resolve_device
from demo.evaluation import thread as thread_demo
from demo.evaluation.robustness import Stopped

__all__ = ["ThreadView", "thread_stream", "run_thread"]

MAX_STEPS, MAX_WARMUP = 1000, 3000  # "a few steps": this panel explains, it does not train models
LABELS = MappingProxyType({"thread": "thread: y.backward(ones) + x.grad.data", "ours": "ours: jacobian_penalty"})
EXPLANATION = """
The thread's loop, per batch (no `zero_grad()` anywhere):
```python
y = model(x)                                        # x.requires_grad_()
y.backward(torch.ones_like(y), retain_graph=True)   # fills x.grad AND every parameter's .grad
penalty = x.grad.data.norm(2)                       # .data: a constant, cut from the graph
loss = cross_entropy(y, t) + lam * penalty
loss.backward()                                     # adds onto the .grad already there
optimizer.step()
```
Ours: `logits, penalty = jacobian_penalty(model, x)` (torch.autograd.grad with `create_graph=True`,
no `.grad` written), `loss = cross_entropy(logits, t) + lam * penalty`, `zero_grad()`, `backward()`, `step()`.
Both start from the same model, trained first for a few plain cross-entropy steps (a trained model has a
large ‖J‖, so whether the penalty lowers it shows at once), and see the same batches.
"""


HOW_TO_READ = (
    "**How to read this.** Both start from the same warmed-up weights. The thread's penalty (x.grad.data)"
    ' sends no gradient to the weights, so its ‖J‖_F never falls; ours does. The last panel shows what '
    ".backward() left in the weights' .grad before the real step: junk that a training loop without "
    'zero_grad() would add.'
)


@dataclass(frozen=True)
class ThreadView:
    penalty: gr.Number
    steps: gr.Number
    warmup_steps: gr.Number
    run: gr.Button
    numbers: gr.Markdown
    figure: gr.Plot


def _thread_gpu_seconds(cfg: RunConfig, warmup_steps: int) -> int:
    # Both approaches train cfg.steps after a shared warm-up, with an exact ‖J‖ at each report.
    return gpu_duration(cfg.replace(steps=3 * cfg.steps + warmup_steps, robustness=False))


@partial(on_gpu, duration=_thread_gpu_seconds)  # ZeroGPU: a GPU worker; unchanged elsewhere
def thread_stream(cfg: RunConfig, warmup_steps: int, max_seconds: float = 0.0
                  ) -> Iterator[dict[str, dict[str, float]]]:
    """The torch-touching part: both approaches on the run's device; yields CPU numbers. It ends
    (robustness.Stopped) `max_seconds` after it began, warm-up included."""
    device = resolve_device(cfg.device)
    dataset = data.load(cfg.dataset, seed=cfg.seed, device=device, noise=cfg.noise, num_classes=cfg.num_classes)
    model = build_model(cfg, dataset.input_shape, dataset.num_classes).to(device)
    yield from thread_demo.compare(
        model, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test,
        penalty=cfg.penalty, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
        method=cfg.method, report_every=max(1, cfg.steps // 25), warmup_steps=warmup_steps,
        should_stop=deadline(max_seconds),
    )


def run_thread(
    dataset: str,
    arch: str,
    seed: int,
    batch_size: int,
    lr: float,
    method: str,
    device: str,
    penalty: float,
    steps: int,
    warmup_steps: int,
    *,
    space: limits.Limits,
    memory: Estimator,
):
    """/thread: the thread's approach and ours for `steps` steps; streams (numbers, figure)."""
    values = dict(dataset=dataset, arch=arch, seed=seed, batch_size=batch_size, lr=lr, method=method,
                  device=device, penalty=penalty, steps=steps)
    cfg, warmup = _config(values, warmup_steps, space)
    records = {name: {"label": LABELS[name], "history": []} for name in thread_demo.APPROACHES}
    pace = Throttle()
    with inputs.plain_errors():
        memory.check(cfg, data.class_count(cfg.dataset, cfg.num_classes), resolve_device(cfg.device))
        try:
            for report in thread_stream(cfg, warmup, space.max_seconds):
                for name, values in report.items():
                    records[name]["history"].append(values)
                done = report["ours"]["step"] == cfg.steps
                update = pace.next(final=done)
                if update == SKIP:
                    yield gr.skip(), gr.skip()
                elif update == HEAVY:
                    runs = [(r["label"], r) for r in records.values()]
                    yield _numbers(records, cfg), plots.steps_figure(runs, plots.THREAD_PANELS)
        except Stopped:  # the app's time limit, warm-up included: say so, keep what was drawn
            limit = f"this app's limit of {space.max_seconds:g} s"
            if not records["ours"]["history"]:
                raise inputs.refuse(f"The warm-up of {warmup} steps did not finish within {limit}: ask for "
                                    "fewer warm-up steps.") from None
            runs = [(r["label"], r) for r in records.values()]
            yield (_numbers(records, cfg) + f"\n\n*Stopped at {limit}.*",
                   plots.steps_figure(runs, plots.THREAD_PANELS))


def _config(values: dict[str, Any], warmup: Any, space: limits.Limits) -> tuple[RunConfig, int]:
    steps = inputs.number(values["steps"], "Steps", 1, MAX_STEPS, whole=True)
    warmup = inputs.number(warmup, "Warm-up steps", 0, MAX_WARMUP, whole=True)
    values = {**values, "steps": steps}
    if not (1 <= steps <= min(MAX_STEPS, space.max_steps) and 0 <= warmup <= min(MAX_WARMUP, space.max_steps)):
        raise inputs.refuse(
            f"This panel takes 1 to {min(MAX_STEPS, space.max_steps)} steps after 0 to "
            f"{min(MAX_WARMUP, space.max_steps)} warm-up steps; got {steps} and {warmup}."
        )
    with inputs.plain_errors():
        return RunConfig.from_mapping({**values, "robustness": False}), warmup


def _numbers(records: dict[str, dict], cfg: RunConfig) -> str:
    """A markdown table of what each approach did, first report against the latest."""
    first = {name: r["history"][0] for name, r in records.items()}
    last = {name: r["history"][-1] for name, r in records.items()}
    thread, ours = last["thread"], last["ours"]

    def change(name: str, key: str, fmt: str = ".4g") -> str:
        return f"{first[name][key]:{fmt}} → {last[name][key]:{fmt}}"

    rows = [
        ("step", f"{thread['step']}", f"{ours['step']}"),
        ("mean exact ‖J‖_F on test data", change("thread", "jacobian_norm"), change("ours", "jacobian_norm")),
        ("test accuracy", change("thread", "test_accuracy", ".3f"), change("ours", "test_accuracy", ".3f")),
        ("‖d penalty / d parameters‖", _get(thread, "penalty_grad_norm"), _get(ours, "penalty_grad_norm")),
        ("‖.grad − ∇loss‖ / ‖∇loss‖ (pollution)", _get(thread, "grad_pollution"), _get(ours, "grad_pollution")),
        ("what the penalty measured", f"‖Jᵀ1‖ of the batch = {_get(thread, 'penalty_value')}",
         f"mean ‖J‖_F² = {_get(ours, 'penalty_value')}"),
        ("mean ‖Jᵀ1‖ vs mean ‖J‖_F on test data",
         f"{thread['column_sum_norm']:.4g} vs {thread['jacobian_norm']:.4g}",
         f"{ours['column_sum_norm']:.4g} vs {ours['jacobian_norm']:.4g}"),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    return (
        f"λ = {cfg.penalty:g}, {cfg.arch} on {cfg.dataset}, seed {cfg.seed}, estimator {cfg.method}.\n\n"
        f"| | {LABELS['thread']} | {LABELS['ours']} |\n|---|---|---|\n{table}\n\n"
        "The thread's penalty is a constant to autograd (its gradient is exactly 0, so its λ changes nothing: "
        "with λ = 0 the same loop takes exactly the same steps), its extra backward "
        "and the missing `zero_grad()` leave junk in `.grad`, and a ones vector measures the column sums "
        "Jᵀ1, not ‖J‖_F."
    )


def _get(report: dict[str, float], key: str) -> str:
    return f"{report[key]:.4g}" if key in report else "–"


# ---------------------------------------------------------------------------------------------
# Layout


def layout() -> ThreadView:
    with gr.Tab("Why did .backward() not learn?", id="thread"):
        gr.Markdown(EXPLANATION)
        with gr.Row():
            penalty = gr.Number(0.1, label="λ for both")
            steps = gr.Number(100, label="Steps", precision=0)
            warmup_steps = gr.Number(200, label="Plain warm-up steps first", precision=0)
            run = gr.Button("Run both", variant="primary", scale=0)
        numbers = gr.Markdown()
        figure = gr.Plot(label="The thread's approach against ours")
        gr.Markdown(HOW_TO_READ, elem_classes=["jp-hint"])
    return ThreadView(penalty, steps, warmup_steps, run, numbers, figure)


# ---------------------------------------------------------------------------------------------
# Wiring


def wire(view: ThreadView, controls: controls_view.Controls, space: limits.Limits, memory: Estimator) -> None:
    view.run.click(
        partial(run_thread, space=space, memory=memory),
        [controls.dataset, controls.arch, controls.seed, controls.batch_size, controls.lr, controls.method,
         controls.device, view.penalty, view.steps, view.warmup_steps],
        [view.numbers, view.figure],
        api_name="thread",
        api_description="The forum thread's .backward() penalty against jacobian_penalty, same model/data/seed.",
        preprocess=False,  # as /train: RunConfig and _config see every value as sent (see training.wire)
        concurrency_id=ACCELERATOR,
        concurrency_limit=space.concurrency,
        show_progress="minimal",
    )
