"""CIFAR-style ResNets (He et al. 2016, section 4.2): ResNet-20 and ResNet-56.

3x3 stem, three stages of ``n`` :class:`~hwprune.models.blocks.BasicBlock` with widths
``(16, 32, 64) * width`` and strides (1, 2, 2), global average pool, linear head ``fc``.
Downsampling blocks use a 1x1 conv + BN shortcut (option B), so every shortcut is prunable.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from hwprune.base.errors import ConfigError
from hwprune.models.blocks import BasicBlock, conv_bn, init_weights, make_divisible
from hwprune.models.registry import register_model

__all__ = ["CifarResNet"]


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: ``(N, in_channels, H, W)`` -> ``(N, num_classes)``."""

    def __init__(self, n: int, in_channels: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        if not isinstance(width, (int, float)) or isinstance(width, bool) or width <= 0:
            raise ConfigError(f"resnet width must be a positive number, got {width!r}")
        if n < 1:
            raise ConfigError(f"resnet needs at least one block per stage, got n={n}")
        widths = [make_divisible(c * width, 8) for c in (16, 32, 64)]
        self.stem = conv_bn(in_channels, widths[0], 3)
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, cout in enumerate(widths):
            blocks: list[nn.Module] = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images -> (N, num_classes) logits."""
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return cast(Tensor, self.fc(self.flatten(self.pool(x))))


def _check_size(name: str, input_size: int) -> None:
    if input_size < 4:
        raise ConfigError(f"{name} needs input_size >= 4 (two stride-2 stages), got {input_size}")


@register_model("resnet20")
def resnet20(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> nn.Module:
    """ResNet-20 (n = 3, about 0.27 M params at width 1)."""
    _check_size("resnet20", input_size)
    return CifarResNet(3, in_channels, num_classes, width=width)


@register_model("resnet56")
def resnet56(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> nn.Module:
    """ResNet-56 (n = 9, about 0.86 M params at width 1)."""
    _check_size("resnet56", input_size)
    return CifarResNet(9, in_channels, num_classes, width=width)
