"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: the network of the Jacobian
regularisation paper's MNIST experiments (Hoffman, Roberts & Yaida 2019).

conv5x5(6) - relu - pool2 - conv5x5(16) - relu - pool2 - fc120 - relu - fc84 - relu -> features.
Both convolutions are padded ("same" size), and an adaptive average pool brings the 16 feature
maps to at most 5x5 (the classic size for 28x28 and 32x32 inputs), so the same network fits 8x8
digits (2x2 maps), MNIST and CIFAR. Images must be at least 4x4 so two 2x2 poolings leave a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

MIN_SIDE = 4  # two 2x2 max-pools halve the image twice
MAX_POOLED = 5  # classic LeNet-5 flattens 16 maps of 5x5


@dataclass(frozen=True)
class LeNetConfig:
    conv_channels: tuple[int, int] = (6, 16)
    hidden: tuple[int, int] = (120, 84)  # the last is the width F of `features`

    def __post_init__(self) -> None:
        sizes = (*self.conv_channels, *self.hidden)
        if len(sizes) != 4 or min(sizes) < 1:
            raise ValueError(f"lenet needs two positive conv_channels and two positive hidden sizes, got {sizes}")


class LeNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, config: LeNetConfig | None = None) -> None:
        super().__init__()
        config = config or LeNetConfig()
        channels, height, width = input_shape
        c1, c2 = config.conv_channels
        h1, h2 = config.hidden
        # Padding 2 keeps the size through each 5x5 convolution; each pool halves it (floor).
        pooled = (min(MAX_POOLED, height // 4), min(MAX_POOLED, width // 4))
        self.conv = nn.Sequential(
            nn.Conv2d(channels, c1, kernel_size=5, padding=2),  # (B, c1, H, W)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c1, H/2, W/2)
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c2, H/4, W/4)
            nn.AdaptiveAvgPool2d(pooled),  # (B, c2, <=5, <=5)
            nn.Flatten(),  # (B, c2 * ph * pw)
        )
        self.fc = nn.Sequential(
            nn.Linear(c2 * pooled[0] * pooled[1], h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
        )
        self.head = nn.Linear(h2, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x))  # (B, 84)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, num_classes)
