"""The run's controls (the left column), the one adapter from their values to a RunConfig, and
the handler signatures built from them.

Every control is named after the RunConfig field it sets (CONFIG_FIELDS). `config_from` is the
only validation of a request: the visitor's values, plus what the app chooses for them (how often
to report and evaluate, the time budget from the Space's limits), become one RunConfig in one
construction, and the Space's step limit is checked in the same call. `config_handler` gives a
handler the parameters /train and /sweep show (one per CONFIG_FIELDS entry, RunConfig's defaults),
so adding a control is adding its field here and its component in `layout`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import gradio as gr
import torch

import models
from demo.app import limits
from demo.engine import data
from demo.engine.config import DEVICES, MAX_CLASSES, TARGETS, RunConfig
from demo.engine.data import POINT_SETS
from jacobian_penalty import METHODS

__all__ = ["CONFIG_FIELDS", "Controls", "POINT_SETS", "config_from", "config_handler", "layout", "method_hint", "wire"]

# The order of /train's parameters: the RunConfig fields a visitor sets.
CONFIG_FIELDS = (
    "dataset", "arch", "penalty", "method", "num_projections", "target",
    "steps", "batch_size", "lr", "seed", "device", "robustness", "num_classes",
)
LAMBDA_PRESETS = (0.0, 1e-4, 1e-3, 0.01, 0.1, 1.0)
MAX_UI_PROJECTIONS = 16
SYNTHETIC = "synthetic"  # the one set whose class count is a setting
# About this many progress reports per run (each is a curve point and a cancellation point for
# Stop), at most every MAX_REPORT_EVERY steps; evaluations (test accuracy, exact ‖J‖, the 2-D
# field) about EVALUATIONS_POINTS times per run on 2-D data, EVALUATIONS_IMAGES times on images.
# At most MAX_EVAL_EVERY steps between evaluations, so that a long run stopped early still has
# weights to inspect.
REPORTS_PER_RUN, MAX_REPORT_EVERY = 100, 25
EVALUATIONS_POINTS, EVALUATIONS_IMAGES, MAX_EVAL_EVERY = 20, 8, 250


@dataclass(frozen=True)
class Controls:
    dataset: gr.Dropdown
    arch: gr.Dropdown
    penalty: gr.Number
    presets: tuple[gr.Button, ...]
    method: gr.Radio
    hint: gr.Markdown
    num_projections: gr.Slider
    target: gr.Radio
    steps: gr.Number
    batch_size: gr.Number
    lr: gr.Number
    seed: gr.Number
    device: gr.Dropdown
    robustness: gr.Checkbox
    num_classes: gr.Number
    estimate: gr.HTML

    def inputs(self) -> list[gr.components.Component]:
        return [getattr(self, name) for name in CONFIG_FIELDS]


def config_from(values: Mapping[str, Any], space: limits.Limits) -> RunConfig:
    """UI values -> the RunConfig that runs here, validated once. Raises ConfigError in plain words."""
    chosen = dict(values)
    steps, dataset = chosen.get("steps", RunConfig.steps), chosen.get("dataset", RunConfig.dataset)
    whole = _whole(steps)
    if whole is not None and whole >= 1:  # else RunConfig says what is wrong with the steps
        chosen.update(schedule(whole, dataset))
    chosen["time_budget"] = limits.time_budget(chosen.get("time_budget", 0.0), space)
    cfg = RunConfig.from_mapping(chosen)
    limits.check(cfg, space)
    return cfg


def schedule(steps: int, dataset: str) -> dict[str, int]:
    """How often a run of `steps` steps reports and evaluates in the app: {report_every, eval_every}.
    The duration estimate asks it too, for the step count it offers (fewer steps, other evaluations)."""
    report_every = min(MAX_REPORT_EVERY, max(1, steps // REPORTS_PER_RUN))
    evaluations = EVALUATIONS_POINTS if dataset in POINT_SETS else EVALUATIONS_IMAGES
    # A multiple of report_every: an evaluation then never runs ahead of the step the status shows.
    eval_every = report_every * max(1, min(MAX_EVAL_EVERY, max(report_every, steps // evaluations)) // report_every)
    return {"report_every": report_every, "eval_every": eval_every}


def _whole(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if number.is_integer() else None


def config_handler(fn: Callable, *, before: tuple[str, ...] = ("session",), after: tuple[inspect.Parameter, ...] = ()):
    """A gradio handler with the parameters `before`, then one per CONFIG_FIELDS entry (RunConfig's
    defaults), then `after`, then `request: gr.Request`. It calls
    `fn(*before_values, values, *after_values, request=request)` with `values` the CONFIG_FIELDS as
    a dict. Gradio reads names, defaults and the request parameter from the signature, so /train's
    and /sweep's API follow CONFIG_FIELDS without a hand-written copy."""
    defaults = RunConfig()
    lead = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in before]
    fields = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=getattr(defaults, name),
                                annotation=_FIELD_TYPES[name]) for name in CONFIG_FIELDS]
    request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                annotation=gr.Request)
    signature = inspect.Signature([*lead, *fields, *after, request])
    n_lead, n_fields = len(lead), len(fields)

    def split(args, kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())
        return (values[:n_lead], dict(zip(CONFIG_FIELDS, values[n_lead:n_lead + n_fields], strict=True)),
                values[n_lead + n_fields:-1], bound.arguments["request"])

    if inspect.isgeneratorfunction(fn):
        def handler(*args, **kwargs):
            first, values, rest, req = split(args, kwargs)
            yield from fn(*first, values, *rest, request=req)
    else:
        def handler(*args, **kwargs):
            first, values, rest, req = split(args, kwargs)
            return fn(*first, values, *rest, request=req)
    handler.__signature__ = signature
    handler.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()
                               if p.annotation is not inspect.Parameter.empty}
    handler.__name__ = handler.__qualname__ = getattr(fn, "__name__", "handler")
    handler.__doc__ = fn.__doc__
    return handler


_FIELD_TYPES = MappingProxyType({f.name: {"str": str, "int": int, "float": float, "bool": bool}[f.type]
                                  for f in dataclasses.fields(RunConfig)})


def method_hint(method: str) -> str:
    info = METHODS.get(method)
    if info is None:
        return ""
    grows = "grows with the number of outputs C" if info.grows_with_outputs else "does not grow with C"
    estimates = info.estimates.replace("||J||_F^2", "‖J‖_F²")  # the library's ASCII, in the app's notation
    return f"Estimates {estimates}. Cost: {info.cost}; {grows}."


def device_hint() -> str:
    if torch.cuda.is_available():
        return f"GPU here: {torch.cuda.get_device_name(0)}; *auto* trains on it."
    return "No GPU here: *auto* trains on the CPU."


def warn_if_incompatible(dataset: str, arch: str) -> None:
    """A toast as soon as the pair cannot work; /train refuses it with the same sentence."""
    if dataset in data.DATASETS and arch in models.ARCHITECTURES:
        reason = models.incompatibility(arch, data.input_shape(dataset), dataset=dataset)
        if reason:
            gr.Warning(reason, duration=6)


# ---------------------------------------------------------------------------------------------
# Layout


def layout(defaults: RunConfig) -> Controls:
    dataset = gr.Dropdown(list(data.DATASETS), value=defaults.dataset, label="Dataset",
                          info="2-D sets (spirals, moons, circles, xor) show the ‖J(x)‖ field live")
    num_classes = gr.Number(defaults.num_classes, label="Classes of the synthetic set", precision=0, minimum=2,
                            maximum=MAX_CLASSES, visible=defaults.dataset == SYNTHETIC,
                            info=f"2 to {MAX_CLASSES}: the outputs C, what exact's cost grows with")
    arch = gr.Dropdown(list(models.ARCHITECTURES), value=defaults.arch, label="Architecture")
    penalty = gr.Number(defaults.penalty, label="Penalty weight λ",
                        info="loss = cross-entropy + λ · ‖J‖_F² (0 trains without the penalty)")
    with gr.Row(equal_height=True, elem_classes=["jp-presets"]):
        presets = tuple(gr.Button(f"{value:g}", size="sm", min_width=40) for value in LAMBDA_PRESETS)
    method = gr.Radio(list(METHODS), value=defaults.method, label="Estimator of ‖J‖_F²")
    hint = gr.Markdown(method_hint(defaults.method), elem_classes=["jp-hint"])
    num_projections = gr.Slider(1, MAX_UI_PROJECTIONS, value=defaults.num_projections, step=1,
                                label="Projections / probes per sample", info="ignored by exact")
    target = gr.Radio(list(TARGETS), value=defaults.target, label="Penalise the Jacobian of",
                      info="logits: df/dx; features: the penultimate layer's d features/dx")
    with gr.Accordion("Training", open=True):
        with gr.Row():
            steps = gr.Number(defaults.steps, label="Steps", precision=0)
            batch_size = gr.Number(defaults.batch_size, label="Batch size", precision=0)
        estimate = gr.HTML('<div class="jp-hint jp-estimate">Measuring how long a run takes here…</div>')
        with gr.Row():
            lr = gr.Number(defaults.lr, label="Learning rate (Adam)")
            seed = gr.Number(defaults.seed, label="Seed", precision=0)
        device = gr.Dropdown(list(DEVICES), value=defaults.device, label="Device", info=device_hint())
        robustness = gr.Checkbox(defaults.robustness, label="Measure robustness at the end (noise, FGSM, PGD)")
    return Controls(dataset, arch, penalty, presets, method, hint, num_projections, target, steps, batch_size, lr,
                    seed, device, robustness, num_classes, estimate)


# ---------------------------------------------------------------------------------------------
# Wiring


def _classes_visibility(dataset: str):
    return gr.update(visible=dataset == SYNTHETIC)


def wire(controls: Controls) -> None:
    for button, value in zip(controls.presets, LAMBDA_PRESETS, strict=True):
        # Set in the browser: no round trip, no queue.
        button.click(None, None, controls.penalty, js=f"() => {value!r}", api_visibility="private")
    controls.dataset.change(_classes_visibility, controls.dataset, controls.num_classes,
                            api_visibility="private", queue=False, show_progress="hidden")
    controls.method.change(method_hint, controls.method, controls.hint, api_visibility="private",
                           queue=False, show_progress="hidden")
    gr.on(
        [controls.dataset.change, controls.arch.change],
        warn_if_incompatible,
        [controls.dataset, controls.arch],
        None,
        api_visibility="private",
        show_progress="hidden",
        concurrency_limit=None,  # cheap; toasts (gr.Warning) travel through the queue
    )
