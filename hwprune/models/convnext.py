"""A small ConvNeXt-style network for tests and demos: ``convnext_nano``.

Structure of torchvision's ConvNeXt (Liu et al. 2022) at toy width: a stem ``Conv2d(k=2, s=2)``
+ channels-first LayerNorm, stages of ``CNBlock`` (depthwise 7x7 conv -> channels-last
LayerNorm -> ``mlp`` = Linear(C, 4C) -> GELU -> Linear(4C, C) -> layer scale ``gamma`` (a bare
``nn.Parameter`` of shape (C, 1, 1)) -> residual add), LayerNorm + ``Conv2d(k=2, s=2)``
downsampling between stages, global average pool, LayerNorm and a Linear head ``fc``.

The stage widths are LayerNorm'd residual streams, so they stay dense; the MLP hidden widths
(4C) are the prunable channel sets. Defaults (dims 16/32/64, one block per stage) have about
50 k parameters and train on Fashion-MNIST (1x28x28) on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from hwprune.base.errors import ConfigError
from hwprune.models.registry import register_model

__all__ = ["LayerNorm2d", "CNBlock", "ConvNeXt"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W), normalised over C."""
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """ConvNeXt block: ``x + gamma * mlp(norm(dwconv(x)))`` on ``(N, C, H, W)``."""

    def __init__(self, dim: int, layer_scale: float = 1e-1) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), float(layer_scale)))

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.mlp(y).permute(0, 3, 1, 2)
        return cast(Tensor, x + self.gamma * y)


class ConvNeXt(nn.Module):
    """``(N, in_channels, H, W)`` -> ``(N, num_classes)`` (see module docstring)."""

    def __init__(self, *, num_classes: int, in_channels: int, dims: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, dims[0], 2, stride=2), LayerNorm2d(dims[0]))]
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            if i:
                layers.append(nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, stride=2)))
            layers.append(nn.Sequential(*[CNBlock(dim) for _ in range(depth)]))
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1])
        self.fc = nn.Linear(dims[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, num_classes)."""
        x = self.features(x).mean((2, 3))
        return cast(Tensor, self.fc(self.norm(x)))


@register_model("convnext_nano")
def convnext_nano(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
                  dims: Sequence[int] = (16, 32, 64), depths: Sequence[int] = (1, 1, 1)) -> nn.Module:
    """ConvNeXt-style net with stage widths ``dims`` and ``depths`` blocks per stage (input >= 2**len(dims))."""
    dims, depths = list(dims), list(depths)
    if not dims or len(dims) != len(depths):
        raise ConfigError(f"convnext_nano: dims {dims} and depths {depths} must be non-empty and of equal length")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in dims + depths):
        raise ConfigError(f"convnext_nano: dims and depths must be positive integers, got {dims}, {depths}")
    if input_size < 2 ** len(dims):
        raise ConfigError(f"convnext_nano: input_size {input_size} is too small for {len(dims)} stride-2 stages")
    return ConvNeXt(num_classes=num_classes, in_channels=in_channels, dims=dims, depths=depths)
