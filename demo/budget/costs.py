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
from jacobian_penalty.costs import plan

__all__ = ["StepCost", "step_cost", "target_width"]

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
    with torch.random.fork_rng(devices=[]):  # building the model must not move the caller's stream
        model = models.build(cfg.arch, data.input_shape(cfg.dataset), classes, **cfg.model_options())
    return model.head.in_features


def step_cost(cfg: RunConfig, num_classes: int | None = None) -> StepCost:
    """The cost of one training step of `cfg` (num_classes: C when known, else from the dataset)."""
    if cfg.penalty == 0 or cfg.regularizer in ("spectral", "weight_decay"):
        return StepCost(1.0, 0.0, "a plain step")
    if cfg.regularizer == "input_gradient":
        return StepCost(3.0, 1.0, "one input gradient with a graph")  # one double backward, as one probe
    if cfg.regularizer == "adversarial":
        # PGD examples are made without a parameter graph: one forward + backward per PGD step.
        return StepCost(1.0 + ADVERSARIAL_STEPS, 0.0, f"PGD-{ADVERSARIAL_STEPS} examples, then a plain step")
    inputs = math.prod(data.input_shape(cfg.dataset))
    p = plan(cfg.method, inputs=inputs, outputs=target_width(cfg, num_classes), num_projections=cfg.num_projections)
    return StepCost(p.time_factor, p.graphs, p.reason)
