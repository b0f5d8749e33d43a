"""Architectures, pure torch.nn: `build(name, input_shape, num_classes, **options)`.

Every model has `features(x) -> (B, F)` (the penultimate activations), `head = nn.Linear(F, C)`
and `forward(x) = head(features(x))`, so a Jacobian penalty can target the logits or the features.
None uses BatchNorm: per-sample Jacobians through one batched vector-Jacobian product need
samples that do not interact. `input_shape` excludes the batch dim: (2,) for points, (1, 8, 8),
(1, 28, 28), (3, 32, 32) for images.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from models import lenet, resnet, vit
from models.lenet import LeNet, LeNetConfig
from models.mlp import MLP, MLPConfig
from models.resnet import ResNet, ResNetConfig
from models.vit import ViT, ViTConfig

__all__ = ["ARCHITECTURES", "build", "incompatibility"]


@dataclass(frozen=True)
class _Spec:
    model: type[nn.Module]
    config: type  # the model's frozen config dataclass; its fields are the `build` options
    min_side: int | None  # None: any input shape; else (C, H, W) images with H, W >= min_side


_SPECS = MappingProxyType(
    {
        "mlp": _Spec(MLP, MLPConfig, None),
        "lenet": _Spec(LeNet, LeNetConfig, lenet.MIN_SIDE),
        "resnet": _Spec(ResNet, ResNetConfig, resnet.MIN_SIDE),
        "vit": _Spec(ViT, ViTConfig, vit.MIN_SIDE),
    }
)

ARCHITECTURES = MappingProxyType(
    {
        "mlp": "multilayer perceptron: flatten, 2 hidden layers of 256 ReLU units; any input",
        "lenet": "LeNet-5 CNN: two conv-ReLU-pool stages, then 120-84 ReLU layers; images",
        "resnet": "small ResNet: torchvision BasicBlocks with GroupNorm, 16/32/64 channels; images",
        "vit": "small vision transformer: 2 blocks, 4 heads, width 64, explicit attention; images",
    }
)


def incompatibility(name: str, input_shape: Sequence[int], *, dataset: str | None = None) -> str | None:
    """Why architecture `name` cannot take inputs of `input_shape`, in plain words, or None.

    `dataset` (optional) names the data in the message instead of its shape.
    """
    if name not in _SPECS:
        return f"Unknown architecture {name!r}; known architectures: {', '.join(ARCHITECTURES)}."
    try:
        shape = tuple(operator.index(d) for d in input_shape)  # ints, numpy ints, torch.Size
    except TypeError:
        shape = ()
    if not shape or min(shape) < 1:
        return f"An input shape must be a non-empty list of positive sizes, got {input_shape!r}."
    min_side = _SPECS[name].min_side
    if min_side is None:
        return None
    source = f"{dataset!r}" if dataset else f"input shape {shape}"
    if len(shape) != 3:
        hint = "Use mlp for 2-D point sets." if shape == (2,) else "Use mlp, which takes any shape."
        return (
            f"{name} needs image inputs (channels, height, width); {source} gives "
            f"{math.prod(shape)} numbers per example. {hint}"
        )
    if min(shape[1:]) < min_side:
        return (
            f"{name} needs images of at least {min_side}x{min_side} pixels; {source} has "
            f"{shape[1]}x{shape[2]}. Use mlp, which takes any size."
        )
    return None


def build(name: str, input_shape: Sequence[int], num_classes: int, **options: Any) -> nn.Module:
    """A freshly initialised model `name` for inputs of `input_shape` (no batch dim).

    `options` are the fields of the model's config (mlp: width, depth; lenet: conv_channels,
    hidden; resnet: width, blocks; vit: dim, depth, heads, mlp_ratio, patch_size).
    Raises ValueError in plain words for an unknown name, shape, class count or option.
    """
    reason = incompatibility(name, input_shape)
    if reason:
        raise ValueError(reason)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive whole number, got {num_classes!r}.")
    spec = _SPECS[name]
    known = [f.name for f in dataclasses.fields(spec.config)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{name} has no option {', '.join(map(repr, unknown))}; its options are {', '.join(known)}.")
    shape = tuple(operator.index(d) for d in input_shape)
    return spec.model(shape, num_classes, spec.config(**options))
