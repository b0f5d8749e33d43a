"""Looking inside a trained model: J(x) of one example, the ‖J(x)‖_F field over the plane,
perturbed inputs. Everything starts from a run record and a CPU state_dict (what a stopped or
finished run keeps) and runs on the CPU; results are numpy arrays for `demo.app.plots`.

For a 2-D input x = (x1, x2), the field is ‖J(x)‖_F = sqrt(sum_c |grad_x f_c(x)|^2) on a
regular grid over the data's bounding box: where it is large, the logits change fast, and a
small step can cross the decision boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from demo.engine import data as datasets
from demo.engine.config import RunConfig
from demo.engine.train import build_model
from demo.evaluation import robustness
from jacobian_penalty import jacobian_norms, per_sample_jacobian

__all__ = ["example_jacobian", "grid", "load_data", "load_model", "norm_field", "perturbed"]

FIELD_RESOLUTION = 60  # grid points per axis: 3600 exact Jacobians, milliseconds for an mlp
FIELD_MARGIN = 0.15  # fraction of the data's extent added on each side of the field
FIELD_CHUNK = 1024  # grid points per batched VJP


def load_model(record: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """The run's model on the CPU in eval mode, with the weights of `state_dict`."""
    cfg = RunConfig(**record["config"])
    info = record["dataset"]
    model = build_model(cfg, tuple(info["input_shape"]), int(info["num_classes"]))
    model.load_state_dict(dict(state_dict))
    return model.eval()


def load_data(record: Mapping[str, Any]) -> datasets.Dataset:
    """The run's dataset on the CPU, drawn as the run drew it (same seed, noise, classes)."""
    cfg = record["config"]
    return datasets.load(
        cfg["dataset"], seed=cfg["seed"], device="cpu", noise=cfg["noise"], num_classes=cfg["num_classes"]
    )


def example_jacobian(model: nn.Module, dataset: datasets.Dataset, index: int) -> dict[str, Any]:
    """J(x) of test example `index` (taken modulo the test set size), with the input and the
    model's prediction: {"jacobian": (C, *input_shape), "input", "label", "prediction",
    "probabilities" (C,), "class_names", "kind", "index", "of": "logits" (the Jacobian's outputs)}."""
    index = int(index) % len(dataset.x_test)
    x = dataset.x_test[index : index + 1]  # (1, *input_shape)
    jac = per_sample_jacobian(model, x)[0]  # (C, *input_shape)
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)[0]
    return {
        "jacobian": jac.numpy(),
        "input": x[0].numpy(),
        "label": int(dataset.y_test[index]),
        "prediction": int(probabilities.argmax()),
        "probabilities": probabilities.numpy(),
        "class_names": list(dataset.class_names),
        "kind": dataset.kind,
        "index": index,
        "of": "logits",
    }


def grid(points: torch.Tensor, resolution: int = FIELD_RESOLUTION, margin: float = FIELD_MARGIN):
    """(xs, ys, xy): axis values over the bounding box of `points` (N, 2) widened by `margin`,
    and the grid as a batch (resolution**2, 2), row-major in y then x (xy[i * R + j] = (xs[j], ys[i]))."""
    lo, hi = points.min(dim=0).values, points.max(dim=0).values
    pad = margin * (hi - lo)
    xs = torch.linspace(float(lo[0] - pad[0]), float(hi[0] + pad[0]), resolution)
    ys = torch.linspace(float(lo[1] - pad[1]), float(hi[1] + pad[1]), resolution)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (R, R) each
    return xs, ys, torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def norm_field(model: nn.Module, points: torch.Tensor, resolution: int = FIELD_RESOLUTION) -> dict[str, Any]:
    """‖J(x)‖_F and the predicted class on a grid over the points' bounding box.

    Returns {"xs" (R,), "ys" (R,), "norms" (R, R), "predictions" (R, R), "num_classes", "of":
    "logits"}, with norms[i, j] and predictions[i, j] at the point (xs[j], ys[i]). The norms are
    the logits' Jacobian's whatever the run's target: the field shows how fast the decision moves.
    """
    xs, ys, xy = grid(points.detach().cpu().float(), resolution)
    norms = torch.cat([jacobian_norms(model, xy[i : i + FIELD_CHUNK]) for i in range(0, len(xy), FIELD_CHUNK)])
    with torch.no_grad():
        logits = model(xy)  # (R*R, C)
    shape = (resolution, resolution)
    return {
        "xs": xs.numpy(),
        "ys": ys.numpy(),
        "norms": norms.reshape(shape).numpy(),
        "predictions": logits.argmax(dim=1).reshape(shape).numpy(),
        "num_classes": int(logits.shape[1]),
        "of": "logits",
    }


def perturbed(
    model: nn.Module, dataset: datasets.Dataset, *, attack: str, strength: float, count: int = 8, seed: int = 0
) -> dict[str, Any]:
    """The first `count` test examples and their perturbed versions under `attack` ("noise",
    "fgsm" or "pgd") at `strength` (sigma or epsilon), with the model's predictions for the
    perturbed ones (robustness.perturbed_examples, seeded like the run's evaluation)."""
    x, y = dataset.x_test[:count], dataset.y_test[:count]
    moved, predictions = robustness.perturbed_examples(
        model, x, y, kind=attack, strength=float(strength), value_range=dataset.value_range, seed=seed
    )
    return {
        "inputs": x.numpy(),
        "perturbed": moved.numpy(),
        "labels": y.tolist(),
        "predictions": predictions.tolist(),
        "class_names": list(dataset.class_names),
        "kind": dataset.kind,
        "attack": attack,
        "strength": float(strength),
    }


def points_of(dataset: datasets.Dataset, limit: int = 300) -> dict[str, np.ndarray]:
    """Test points to draw over a field: {"x": (N, 2), "y": (N,)}."""
    return {"x": dataset.x_test[:limit].numpy(), "y": dataset.y_test[:limit].numpy()}
