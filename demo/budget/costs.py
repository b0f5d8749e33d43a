"""What a run's training step costs, read from the library's one cost table (jacobian_penalty.costs).

`step_cost(cfg)` turns a RunConfig into the Jacobian's shape (D inputs, C outputs of the target the
penalty uses: the logits, or the features before the head) and asks `jacobian_penalty.costs.plan`
for the method's passes and graphs. The regularisers that are not a Jacobian penalty are costed
here, in the same units. The ZeroGPU duration (demo.app.zerogpu) and the memory budget
(demo.budget.memory) both read this, so they cannot disagree on what a method costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import models
from demo.engine import data
from demo.engine.config import RunConfig
from jacobian_penalty.costs import MODES, plan
from jacobian_penalty.forward_mode import unsafe_modules

__all__ = ["Products", "StepCost", "products", "step_cost", "target_width"]

ADVERSARIAL_STEPS = 3  # PGD-3 makes the adversarial examples (demo.engine.regularizers)


@dataclass(frozen=True)
class StepCost:
    time_factor: float  # a training step over a plain cross-entropy step
    graphs: float  # Jacobian graphs held for the backward, in units of one projection's graph
    what: str  # in words: which products the step makes


def target_width(cfg: RunConfig, num_classes: int | None = None) -> int:
    """C of the penalised Jacobian: the classes for the logits, the head's input for features."""
    classes = data.class_count(cfg.dataset, cfg.num_classes) if num_classes is None else num_classes
    if cfg.target == "logits":
        return classes
    return _model(cfg, classes).head.in_features


def forward_mode_safe(cfg: RunConfig, num_classes: int | None = None) -> bool:
    """Whether the library may take forward mode through the penalised part of this model (it
    refuses to through LayerNorm: jacobian_penalty.forward_mode), as it decides at run time."""
    classes = data.class_count(cfg.dataset, cfg.num_classes) if num_classes is None else num_classes
    model = _model(cfg, classes)
    return not unsafe_modules(model if cfg.target == "logits" else model.features)


def _model(cfg: RunConfig, classes: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):  # building the model must not move the caller's stream
        return models.build(cfg.arch, data.input_shape(cfg.dataset), classes, **cfg.model_options())


@dataclass(frozen=True)
class Products:
    """What a step of `cfg` makes: `count` products per sample of kind `mode` (a MODES key of
    jacobian_penalty.costs, or "plain"). The memory model probes this very kind of product."""

    mode: str
    count: int


def products(cfg: RunConfig, num_classes: int | None = None) -> Products:
    """The Jacobian products one training step of `cfg` makes (the regularisers' too)."""
    if cfg.penalty == 0 or cfg.regularizer in ("spectral", "weight_decay", "adversarial"):
        return Products("plain", 0)  # adversarial: PGD examples without a parameter graph, then a plain step
    if cfg.regularizer == "input_gradient":
        return Products("probes", 1)  # one input gradient with a graph: one reverse product
    inputs = math.prod(data.input_shape(cfg.dataset))
    p = plan(cfg.method, inputs=inputs, outputs=target_width(cfg, num_classes), num_projections=cfg.num_projections,
             forward_mode_safe=forward_mode_safe(cfg, num_classes))
    return Products(p.mode, p.products)


def step_cost(cfg: RunConfig, num_classes: int | None = None) -> StepCost:
    """The cost of one training step of `cfg` (num_classes: C when known, else from the dataset):
    its products (`products`) priced by the library's MODES table."""
    made = products(cfg, num_classes)
    if cfg.penalty > 0 and cfg.regularizer == "adversarial":
        # PGD examples are made without a parameter graph: one forward + backward per PGD step.
        return StepCost(1.0 + ADVERSARIAL_STEPS, 0.0, f"PGD-{ADVERSARIAL_STEPS} examples, then a plain step")
    if made.mode == "plain":
        return StepCost(1.0, 0.0, "a plain step")
    time_per, graphs_per = MODES[made.mode]
    return StepCost(1.0 + time_per * made.count, graphs_per * made.count,
                    f"{made.count} {made.mode.replace('_', ' ')} product(s) a sample")
