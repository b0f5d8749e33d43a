"""A multilayer perceptron: flatten, then `depth` hidden layers of `width` ReLU units.

It takes inputs of any shape (2-D points, images), which makes it the one architecture that fits
every dataset, and the cheapest to differentiate twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class MLPConfig:
    width: int = 256  # units per hidden layer, and the width F of `features`
    depth: int = 2  # hidden layers; at least one, so `features` are learned activations

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"mlp needs width >= 1 and depth >= 1, got {self.width}, {self.depth}")


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, config: MLPConfig | None = None) -> None:
        super().__init__()
        config = config or MLPConfig()
        layers: list[nn.Module] = [nn.Flatten()]  # (B, *input_shape) -> (B, D)
        fan_in = math.prod(input_shape)
        for _ in range(config.depth):
            layers += [nn.Linear(fan_in, config.width), nn.ReLU()]
            fan_in = config.width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(config.width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)  # (B, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, num_classes)
