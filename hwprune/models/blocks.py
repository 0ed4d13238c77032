"""Residual block protocol and shared building blocks.

Every residual block that supports ``layer``-granularity removal subclasses :class:`ResidualBlock`:
it has attributes ``branch`` (module or ``None``), ``shortcut`` (module, ``nn.Identity`` for an
identity shortcut) and ``act`` (module, ``nn.Identity`` when there is no post-add activation).
``forward(x) = act(shortcut(x) + branch(x))``, or ``act(shortcut(x))`` once ``branch is None``.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

__all__ = ["ResidualBlock", "BasicBlock", "conv_bn", "make_divisible", "init_weights"]


class ResidualBlock(nn.Module):
    """``act(shortcut(x) + branch(x))``; setting ``branch = None`` turns the block into its shortcut.

    Args:
        branch: the residual branch (maps ``(N, C_in, H, W)`` to ``(N, C_out, H', W')``), or None.
        shortcut: the skip path with the same output shape; default ``nn.Identity()``.
        act: activation applied after the addition; default ``nn.Identity()``.
    """

    def __init__(
        self,
        branch: nn.Module | None,
        shortcut: nn.Module | None = None,
        act: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.branch: nn.Module | None = branch
        self.shortcut: nn.Module = shortcut if shortcut is not None else nn.Identity()
        self.act: nn.Module = act if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``act(shortcut(x) + branch(x))`` (``act(shortcut(x))`` once the branch is removed)."""
        if self.branch is None:
            return cast(Tensor, self.act(self.shortcut(x)))
        return cast(Tensor, self.act(self.shortcut(x) + self.branch(x)))


def conv_bn(
    in_ch: int,
    out_ch: int,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Bias-free ``Conv2d`` ("same" padding for odd kernels) + ``BatchNorm2d`` (+ activation)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class BasicBlock(ResidualBlock):
    """CIFAR ResNet basic block: two 3x3 conv-BN on the branch, ReLU after the addition.

    Downsampling blocks (``stride != 1`` or ``in_ch != out_ch``) use a 1x1 conv + BN shortcut
    (option B); the others use the identity. Input ``(N, in_ch, H, W)`` -> ``(N, out_ch, H/s, W/s)``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        branch = nn.Sequential(
            conv_bn(in_ch, out_ch, 3, stride=stride),
            conv_bn(out_ch, out_ch, 3, act=None),
        )
        shortcut: nn.Module
        if stride != 1 or in_ch != out_ch:
            shortcut = conv_bn(in_ch, out_ch, 1, stride=stride, act=None)
        else:
            shortcut = nn.Identity()
        super().__init__(branch, shortcut, nn.ReLU())


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (>= ``min_value``, never < 90 % of value)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@torch.no_grad()
def init_weights(model: nn.Module) -> None:
    """Deterministic (under ``torch.manual_seed``) init: Kaiming-normal convs, BN = (1, 0).

    Linear layers keep PyTorch's default (seeded) Kaiming-uniform init, which trains MLP heads well.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
