"""A small residual network from torchvision's BasicBlock, with GroupNorm instead of BatchNorm.

Why no BatchNorm: in training mode it normalises with statistics of the whole batch, so sample b's
output depends on every other sample, and the per-sample Jacobians that the penalty estimators
take through one batched vector-Jacobian product would mix samples. GroupNorm normalises each
sample on its own (Wu & He 2018), so the samples stay independent.

Layout (CIFAR-style ResNet, He et al. 2016, with one block per stage by default):
stem conv3x3(w) - GN - relu, then stages of w, 2w, 4w channels (stride 2 between stages),
then a global average pool -> features of width 4w (64 by default). Works on any image of at
least 4x4 pixels with any number of channels (8x8 digits end as 2x2 maps before the pool).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1, conv3x3

MIN_SIDE = 4  # two stride-2 stages leave at least a 1x1 map
GROUPS = 8  # GroupNorm groups (fewer when the channel count is not a multiple of 8)


def group_norm(channels: int) -> nn.GroupNorm:
    """The `norm_layer` factory for BasicBlock: it is called with a channel count."""
    return nn.GroupNorm(math.gcd(GROUPS, channels), channels)


@dataclass(frozen=True)
class ResNetConfig:
    width: int = 16  # channels of the first stage; stages have width, 2*width, 4*width
    blocks: int = 1  # BasicBlocks per stage

    def __post_init__(self) -> None:
        if self.width < 1 or self.blocks < 1:
            raise ValueError(f"resnet needs width >= 1 and blocks >= 1, got {self.width}, {self.blocks}")


class ResNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, config: ResNetConfig | None = None) -> None:
        super().__init__()
        config = config or ResNetConfig()
        w = config.width
        self.stem = nn.Sequential(conv3x3(input_shape[0], w), group_norm(w), nn.ReLU())
        stages: list[nn.Module] = []
        in_planes = w
        for i, planes in enumerate((w, 2 * w, 4 * w)):
            for j in range(config.blocks):
                stride = 2 if i > 0 and j == 0 else 1
                # The shortcut must match the block's output shape when it changes.
                downsample = None
                if stride != 1 or in_planes != planes:
                    downsample = nn.Sequential(conv1x1(in_planes, planes, stride), group_norm(planes))
                stages.append(BasicBlock(in_planes, planes, stride, downsample, norm_layer=group_norm))
                in_planes = planes
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(in_planes, num_classes)

    def features(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # (B, w, H, W)
        x = self.stages(x)  # (B, 4w, H/4, W/4)
        return self.pool(x)  # (B, 4w)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, num_classes)
