"""The cost view: time of one training step with each estimator against the number of outputs C,
measured on request on the current device by demo.budget.timing.time_steps (the controls' architecture
and the dataset's input shape; inputs and labels are random, as cost does not depend on them)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import gradio as gr
import pandas as pd
import torch

from demo.app import controls as controls_view
from demo.app import inputs, limits, plots
from demo.app.running import deadline
from demo.app.streaming import ACCELERATOR
from demo.app.zerogpu import on_gpu
from demo.budget import timing as bench
from demo.budget.memory import Estimator
from demo.engine import data
from demo.engine.config import RunConfig
from demo.engine.train import resolve_device
from demo.evaluation.robustness import Stopped
from jacobian_penalty import METHODS

__all__ = ["CostView", "measure_cost"]

CLASS_CHOICES = (10, 30, 100, 300, 1000)
DEFAULT_CLASSES = (10, 100, 1000)
REPEATS = 7  # interleaved rounds per point: enough for a stable median on a shared machine
# A ratio whose rounds spread wider than this (max/min) is noisier than most differences shown.
NOISY_SPREAD = 1.5
MAX_BATCH = 256
CHUNK_ABOVE = 100  # exact takes its rows in chunks of this size when C is larger (bounds memory)
COST_GPU_SECONDS = 60  # ZeroGPU allowance for one measurement: a few C values x 5 methods x REPEATS
TABLE_COLUMNS = ("method", "C", "ms per step", "ms (min–max)", "× plain step", "× plain (min–max)")
MAX_LIST = 20  # items a list may have before duplicates are dropped (more is not a page's request)


HOW_TO_READ = (
    "**How to read this.** One line per method: milliseconds per training step (left) and that step as a "
    "multiple of a plain cross-entropy step (right), both on log scales, against the number of outputs "
    "C. Flat lines cost the same at 10 and 1000 outputs; exact's line climbs with C. "
    "The multiple is the number that carries across machines."
)


@dataclass(frozen=True)
class CostView:
    classes: gr.CheckboxGroup
    methods: gr.CheckboxGroup
    batch_size: gr.Number
    measure: gr.Button
    figure: gr.Plot
    table: gr.Dataframe
    note: gr.Markdown


@partial(on_gpu, duration=lambda *args, **kwargs: COST_GPU_SECONDS)  # ZeroGPU: a GPU worker
def cost_stream(arch: str, shape: tuple[int, ...], device: torch.device, classes: Sequence[int],
                methods: Sequence[str], batch_size: int, max_seconds: float = 0.0) -> Iterator[list[dict]]:
    """The torch-touching part: demo.budget.timing.time_steps at each C in turn; yields the rows so
    far. Ends (robustness.Stopped) `max_seconds` after it began."""
    rows: list[dict] = []
    past = deadline(max_seconds)
    for num_classes in sorted(classes):
        rows += bench.time_steps(
            arch, num_classes, list(methods), batch_size=batch_size, input_shape=shape, device=device,
            repeats=REPEATS, measure_memory=False, chunk_size=CHUNK_ABOVE if num_classes > CHUNK_ABOVE else None,
            should_stop=past,
        )
        yield rows


def measure_cost(arch: str, dataset: str, device: str, classes: Sequence[int], methods: Sequence[str],
                 batch_size: int, *, memory: Estimator, max_seconds: float = 0.0):
    """/cost: ms per training step and ratio to a plain step for each method at each C; streams
    (figure, table) after each C."""
    configs = _configs(arch, dataset, device, classes, methods, batch_size, memory)
    first = configs[0]
    classes, methods = sorted({int(c) for c in classes}), [cfg.method for cfg in configs]  # each measured once
    shape, torch_device = data.input_shape(first.dataset), resolve_device(first.device)
    rows: list[dict] = []
    try:
        for rows in cost_stream(first.arch, shape, torch_device, classes, methods, first.batch_size, max_seconds):
            yield plots.cost_figure(rows), _table(rows), noise_note(rows)
    except Stopped:  # the app's time limit: the C values measured so far stay on screen
        done = sorted({r["num_classes"] for r in rows})
        if not rows:
            raise inputs.refuse(f"Measuring at C = {classes[0]} did not finish within this app's limit of "
                                f"{max_seconds:g} s: choose fewer methods, a smaller batch or a smaller C.") from None
        yield (plots.cost_figure(rows), _table(rows), noise_note(rows) + f" *Stopped at this app's limit of "
               f"{max_seconds:g} s after C = {', '.join(map(str, done))}.*")


def noise_note(rows: list[dict]) -> str:
    """How far to trust the numbers: which ratios spread over their rounds more than NOISY_SPREAD,
    or that none did. The ms and the × column come from the same medians (ms = × · plain ms)."""
    noisy = [f"{r['method']} at C = {r['num_classes']} ({r['ratio_low']:.2f}–{r['ratio_high']:.2f}×)"
             for r in rows if r["method"] != bench.PLAIN and r["ratio_low"] > 0
             and r["ratio_high"] / r["ratio_low"] > NOISY_SPREAD]
    head = (f"Medians of {REPEATS} interleaved rounds; each × is that method's median ms over the plain step's "
            "median ms at the same C, so the two columns agree. ")
    if not noisy:
        return head + "Every ratio stayed within its min–max range shown: the differences are real."
    return head + ("**Noisy:** the machine was busy, and these ratios moved more than the differences between "
                   "methods: " + "; ".join(noisy) + ". Measure again, or trust only large differences.")


def _configs(arch, dataset, device, classes, methods, batch_size, memory: Estimator) -> list[RunConfig]:
    """One RunConfig per method, each measured once: RunConfig checks the run's own fields (dataset,
    architecture, method, batch, device, whether they fit together), as for /train; here only what
    the Cost tab adds, its lists of C, and the memory the largest C takes (exact keeps a graph per
    output)."""
    # Values arrive as sent (preprocess=False): any JSON, so compare, never convert, first.
    if not (isinstance(classes, list) and isinstance(methods, list) and classes and methods):
        raise inputs.refuse("Choose at least one number of outputs C and one method.")
    if len(classes) > MAX_LIST or len(methods) > MAX_LIST:
        raise inputs.refuse(f"Send at most {MAX_LIST} numbers of outputs C and {MAX_LIST} methods (each is "
                            f"measured once), got {len(classes)} and {len(methods)}.")
    if any(c not in CLASS_CHOICES for c in classes) or not all(isinstance(m, str) for m in methods):
        raise inputs.refuse(f"Methods must be among {', '.join(METHODS)} and the number of outputs C among "
                            f"{', '.join(map(str, CLASS_CHOICES))}.")
    with inputs.plain_errors():
        configs = [RunConfig.from_mapping({"dataset": dataset, "arch": arch, "method": method, "device": device,
                                           "batch_size": batch_size, "robustness": False})
                   for method in dict.fromkeys(methods)]
    most = max(int(c) for c in classes)
    with inputs.plain_errors(f"At C = {most}: "):
        for cfg in configs:
            memory.check(cfg, most, resolve_device(cfg.device))
    return configs


def _table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [[r["method"], r["num_classes"], round(r["ms_per_step"], 3), f"{r['ms_low']:.3g}–{r['ms_high']:.3g}",
          round(r["ratio"], 2), f"{r['ratio_low']:.2f}–{r['ratio_high']:.2f}"] for r in rows],
        columns=list(TABLE_COLUMNS),
    )


# ---------------------------------------------------------------------------------------------
# Layout


def layout() -> CostView:
    with gr.Tab("Cost", id="cost"):
        gr.Markdown(
            "What one training step costs with each estimator as the number of outputs C grows (the "
            "thread's case: C ≈ 1000). *exact* takes all C rows; *projection*, *jvp* and *fd* do not "
            "grow with C. Measured here, now, on the device chosen in Settings, for the architecture "
            "and input shape chosen there; a plain cross-entropy step is the baseline. Timing shares "
            "the machine with other visitors: the ratio is the steadier number."
        )
        with gr.Row():
            classes = gr.CheckboxGroup(list(CLASS_CHOICES), value=list(DEFAULT_CLASSES), label="Outputs C")
            methods = gr.CheckboxGroup(list(METHODS), value=list(METHODS), label="Methods")
            batch_size = gr.Number(64, label="Batch size", precision=0)
            measure = gr.Button("Measure", variant="primary", scale=0)
        figure = gr.Plot(label="Cost of a training step against C")
        gr.Markdown(HOW_TO_READ, elem_classes=["jp-hint"])
        note = gr.Markdown("", elem_classes=["jp-hint"])
        table = gr.Dataframe(pd.DataFrame(columns=list(TABLE_COLUMNS)), label="Measurements", interactive=False)
    return CostView(classes, methods, batch_size, measure, figure, table, note)


# ---------------------------------------------------------------------------------------------
# Wiring


def wire(view: CostView, controls: controls_view.Controls, space: limits.Limits, memory: Estimator) -> None:
    view.measure.click(
        partial(measure_cost, memory=memory, max_seconds=space.max_seconds),
        [controls.arch, controls.dataset, controls.device, view.classes, view.methods, view.batch_size],
        [view.figure, view.table, view.note],
        api_name="cost",
        api_description="ms per training step and ratio to a plain step, per estimator and number of outputs C.",
        preprocess=False,  # as /train: our checks see every value as sent (see training.wire)
        concurrency_id=ACCELERATOR,
        concurrency_limit=space.concurrency,
        show_progress="minimal",
    )
