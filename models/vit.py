"""A small vision transformer (Dosovitskiy et al. 2021) for 8x8 to 32x32 images.

Patches of p x p pixels (a strided convolution) become tokens, plus a learned position
embedding; `depth` pre-norm blocks of multi-head self-attention and a GELU MLP; then the tokens
are averaged (global average pooling instead of a CLS token, as in Beyer, Zhai & Kolesnikov 2022,
"Better plain ViT baselines for ImageNet-1k": one token fewer to learn) and layer-normed ->
features of width `dim`.

Attention is written out as softmax(q k^T / sqrt(d)) v, on purpose. PyTorch's fused
F.scaled_dot_product_attention picks a flash or memory-efficient kernel whenever it can (on CPU
too: `_scaled_dot_product_flash_attention_for_cpu`), and those kernels have no double backward
and no forward-mode rule, so the Jacobian penalty (a gradient of a gradient) and the "jvp"
estimator would fail on them. The explicit math path has both, so every estimator works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

MIN_SIDE = 4  # images at least 4x4, so patches of 1 pixel still give MIN_TOKENS tokens
MIN_TOKENS = 16  # the automatic patch size keeps at least a 4x4 grid of tokens
PATCH_SIZES = (4, 2, 1)  # tried largest first


@dataclass(frozen=True)
class ViTConfig:
    dim: int = 64  # token width, and the width F of `features`
    depth: int = 2  # transformer blocks
    heads: int = 4
    mlp_ratio: int = 4  # hidden width of each block's MLP, in multiples of dim
    patch_size: int | None = None  # None: 4 for 28x28 and 32x32, 2 for 8x8 (see auto_patch_size)

    def __post_init__(self) -> None:
        if min(self.dim, self.depth, self.heads, self.mlp_ratio) < 1 or self.dim % self.heads:
            raise ValueError(
                f"vit needs positive sizes and dim divisible by heads, got dim={self.dim}, "
                f"depth={self.depth}, heads={self.heads}, mlp_ratio={self.mlp_ratio}"
            )


def auto_patch_size(height: int, width: int) -> int:
    """The largest of 4, 2, 1 that divides the image and leaves at least MIN_TOKENS patches."""
    for p in PATCH_SIZES:
        if height % p == 0 and width % p == 0 and (height // p) * (width // p) >= MIN_TOKENS:
            return p
    return 1


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        # (B, T, 3D) -> three (B, heads, T, d) with d = D / heads
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        att = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, heads, T, T)
        att = att.softmax(dim=-1)
        y = att @ v  # (B, heads, T, d)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, D)
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, config: ViTConfig | None = None) -> None:
        super().__init__()
        config = config or ViTConfig()
        channels, height, width = input_shape
        p = config.patch_size or auto_patch_size(height, width)
        if p < 1 or height % p or width % p:
            raise ValueError(f"vit patch_size {p} must divide the image size {height}x{width}")
        tokens = (height // p) * (width // p)
        self.patch_size = p
        self.patch_embed = nn.Conv2d(channels, config.dim, kernel_size=p, stride=p)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, config.dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*(Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth)))
        self.ln_f = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)  # (B, D, H/p, W/p)
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # (B, T, D)
        x = self.blocks(x)
        return self.ln_f(x.mean(dim=1))  # (B, D)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, num_classes)
