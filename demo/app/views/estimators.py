"""The Estimators tab: each method's estimate of ‖J‖_F² over many seeds against the exact value,
for the current model and batch, with its cost: bias, spread and time per call side by side,
independent probes against orthogonal ones (jacobian_penalty.estimator_spread).

The model is the session's newest run of the chosen dataset and architecture (its weights), or a
freshly initialised one when there is none; the batch is the first test points of that dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr
import pandas as pd
import torch

from demo.app import inputs, inspection, limits, plots
from demo.app import session as sessions
from demo.app.running import deadline
from demo.app.streaming import ACCELERATOR
from demo.app.zerogpu import on_gpu
from demo.engine import data
from demo.engine.config import MAX_CLASSES, TARGETS, RunConfig
from demo.engine.train import build_model
from demo.evaluation.robustness import Stopped, checkpoint
from jacobian_penalty import estimator_spread

__all__ = ["EstimatorsView", "compare_estimators", "layout", "wire"]

ESTIMATORS = ("projection", "jvp", "fd")
PROBES = ("iid", "orthogonal")
DEFAULT_SEEDS, MAX_SEEDS = 32, 200
MAX_PROJECTIONS = 16
BATCH = 32  # test points the penalty is estimated on
TABLE_COLUMNS = ("method", "probes", "n", "mean / exact", "bias %", "rel. std", "ms per call", "products")
GPU_SECONDS = 60

HOW_TO_READ = (
    "**How to read this.** The spread: every dot is one estimate of ‖J‖_F² (one seed), one column per "
    "estimator and kind of probe; the dashed line is the exact value. A column centred on the line is "
    "unbiased; a narrower one needs fewer draws for the same precision. The cost: each estimator's relative "
    "spread against the time of one call (no graph). Down and to the left is better. Orthogonal probes are "
    "never worse in expectation and exact for projection at n = C; at small n against a large C or D the gain "
    "is small and can hide in the seed-to-seed noise (the library's benchmark measures it over 60 seeds)."
)


@dataclass(frozen=True)
class EstimatorsView:
    methods: gr.CheckboxGroup
    num_projections: gr.Slider
    seeds: gr.Number
    compare: gr.Button
    info: gr.Markdown
    figure: gr.Plot
    table: gr.Dataframe


@partial(on_gpu, duration=lambda *args, **kwargs: GPU_SECONDS)  # ZeroGPU: a GPU worker
def spreads(model: torch.nn.Module, x: torch.Tensor, target: str, methods: list[str], n: int, seeds: int,
            max_seconds: float) -> list[dict[str, Any]]:
    """The torch-touching part: one row per (method, probes), as plain numbers."""
    f = model if target == "logits" else model.features
    past, rows = deadline(max_seconds), []
    for method in methods:
        for probes in PROBES:
            checkpoint(past)
            spread = estimator_spread(f, x, method=method, num_projections=n, probes=probes, seeds=range(seeds))
            rows.append({"method": method, "probes": probes, "n": n, "exact": spread.exact,
                         "estimates": list(spread.estimates), "mean": spread.mean, "bias": spread.bias,
                         "relative_std": spread.relative_std, "ms_per_call": 1e3 * spread.seconds_per_call,
                         "products": spread.plan.products})
    return rows


def compare_estimators(session: dict | None, dataset: Any, arch: Any, num_classes: Any, target: Any,
                       methods: Any, num_projections: Any, seeds: Any, *, max_seconds: float):
    """/estimators: (info, figure, table) for the controls' dataset and architecture."""
    n = inputs.number(num_projections, "Projections / probes per sample", 1, MAX_PROJECTIONS, whole=True)
    seeds = inputs.number(seeds, "Seeds", 2, MAX_SEEDS, whole=True)
    if not isinstance(methods, list) or not methods:
        raise inputs.refuse(f"Estimators: choose at least one of {', '.join(ESTIMATORS)}.")
    methods = list(dict.fromkeys(inputs.choice(m, "Estimators", ESTIMATORS) for m in methods[:len(ESTIMATORS)]))
    target = inputs.choice(target, "Penalise the Jacobian of", TARGETS)
    with inputs.plain_errors():
        cfg = RunConfig.from_mapping({"dataset": dataset, "arch": arch, "num_classes": num_classes,
                                      "robustness": False})
    if cfg.num_classes > MAX_CLASSES:
        raise inputs.refuse(f"At most {MAX_CLASSES} classes.")
    model, which = _model(session, cfg)
    dataset_ = data.load(cfg.dataset, seed=cfg.seed, noise=cfg.noise, num_classes=cfg.num_classes)
    x = dataset_.x_test[:BATCH]
    try:
        rows = spreads(model, x, target, methods, n, seeds, max_seconds)
    except Stopped:
        raise inputs.refuse(f"{seeds} seeds of {len(methods)} estimator(s) did not finish within this app's limit "
                            f"of {max_seconds:g} s: ask for fewer seeds or estimators.") from None
    except ValueError as exc:  # a method the model cannot take (jvp through layer norm, ...), said plainly
        raise inputs.refuse(str(exc)) from None
    info = (f"{which}; {len(x)} test points of {cfg.dataset}; ‖J‖_F² of the {target}, exact "
            f"{rows[0]['exact']:.4g}; {seeds} seeds per estimator, n = {n}.")
    return info, plots.estimators_figure(rows, of=target), _table(rows)


def _model(session: dict | None, cfg: RunConfig) -> tuple[torch.nn.Module, str]:
    """The session's newest run of this dataset and architecture, or a fresh model, and which."""
    for run in reversed((session or {}).get("runs", [])):
        record = run["record"]
        if (run["weights"] and record["config"]["dataset"] == cfg.dataset and record["config"]["arch"] == cfg.arch
                and record["dataset"].get("num_classes") == data.class_count(cfg.dataset, cfg.num_classes)):
            return inspection.load_model(record, run["weights"]), f"Run #{run['id']} ({sessions.short_label(run)})"
    shape, classes = data.input_shape(cfg.dataset), data.class_count(cfg.dataset, cfg.num_classes)
    return build_model(cfg, shape, classes).eval(), f"A freshly initialised {cfg.arch} (no run of it yet)"


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [[r["method"], r["probes"], r["n"], round(r["mean"] / r["exact"], 4) if r["exact"] else None,
          round(100 * r["bias"] / r["exact"], 2) if r["exact"] else None, round(r["relative_std"], 4),
          round(r["ms_per_call"], 3), r["products"]] for r in rows],
        columns=list(TABLE_COLUMNS),
    )


# ---------------------------------------------------------------------------------------------
# Layout


def layout() -> EstimatorsView:
    with gr.Tab("Estimators", id="estimators"):
        gr.Markdown(
            "How far each estimator strays from the exact ‖J‖_F² and what it costs, on the current model "
            "(the newest run of the dataset and architecture chosen in the settings) and a batch of its test "
            "points: many seeds each, independent probes against orthogonal ones (the library's default)."
        )
        with gr.Row():
            methods = gr.CheckboxGroup(list(ESTIMATORS), value=list(ESTIMATORS), label="Estimators")
            num_projections = gr.Slider(1, MAX_PROJECTIONS, value=4, step=1, label="Projections / probes n")
            seeds = gr.Number(DEFAULT_SEEDS, label="Seeds", precision=0, minimum=2, maximum=MAX_SEEDS)
            compare = gr.Button("Compare", variant="primary", scale=0)
        info = gr.Markdown("")
        figure = gr.Plot(plots.message_figure("Press Compare: each estimator's spread appears here."),
                         label="Estimates over seeds against the exact value")
        gr.Markdown(HOW_TO_READ, elem_classes=["jp-hint"])
        table = gr.Dataframe(pd.DataFrame(columns=list(TABLE_COLUMNS)), label="Bias, spread and cost",
                             interactive=False)
    return EstimatorsView(methods, num_projections, seeds, compare, info, figure, table)


# ---------------------------------------------------------------------------------------------
# Wiring


def wire(view: EstimatorsView, controls, session: gr.State, space: limits.Limits) -> None:
    view.compare.click(
        partial(compare_estimators, max_seconds=space.max_seconds),
        [session, controls.dataset, controls.arch, controls.num_classes, controls.target, view.methods,
         view.num_projections, view.seeds],
        [view.info, view.figure, view.table],
        api_name="estimators",
        api_description="Each estimator's estimates over seeds against the exact ‖J‖_F², with bias, spread and time.",
        preprocess=False,  # values as sent, checked by demo.app.inputs and RunConfig
        concurrency_id=ACCELERATOR,
        concurrency_limit=space.concurrency,
        show_progress="minimal",
    )
