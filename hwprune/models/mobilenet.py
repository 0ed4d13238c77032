"""MobileNetV2 (Sandler et al. 2018) with a width multiplier and CIFAR-style strides.

Inverted residuals with a residual connection (stride 1, in == out) are
:class:`~hwprune.models.blocks.ResidualBlock` (identity shortcut, no post-add activation); the others
are plain :class:`InvertedResidual` modules. Channel counts are multiples of 8.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from hwprune.base.errors import ConfigError
from hwprune.models.blocks import ResidualBlock, conv_bn, init_weights, make_divisible
from hwprune.models.registry import register_model

__all__ = ["MobileNetV2", "InvertedResidual", "inverted_residual", "MBV2_SETTINGS"]

# (expansion t, output channels c, repeats n, first stride s) as in the paper, Table 2.
MBV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _branch(in_ch: int, out_ch: int, stride: int, expand: int) -> nn.Sequential:
    hidden = in_ch * expand
    layers: list[nn.Module] = []
    if expand != 1:
        layers.append(conv_bn(in_ch, hidden, 1, act=nn.ReLU6))
    layers.append(conv_bn(hidden, hidden, 3, stride=stride, groups=hidden, act=nn.ReLU6))
    layers.append(conv_bn(hidden, out_ch, 1, act=None))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Inverted residual without a skip (stride 2 or in != out): expand 1x1 -> depthwise 3x3 -> project 1x1."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        self.conv = _branch(in_ch, out_ch, stride, expand)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to (N, C, H, W) features."""
        return cast(Tensor, self.conv(x))


def inverted_residual(in_ch: int, out_ch: int, stride: int, expand: int) -> nn.Module:
    """A :class:`ResidualBlock` when ``stride == 1 and in_ch == out_ch``, else an :class:`InvertedResidual`."""
    if stride == 1 and in_ch == out_ch:
        return ResidualBlock(_branch(in_ch, out_ch, stride, expand), nn.Identity(), nn.Identity())
    return InvertedResidual(in_ch, out_ch, stride, expand)


class MobileNetV2(nn.Module):
    """MobileNetV2: ``(N, in_channels, H, W)`` -> ``(N, num_classes)``.

    Args:
        width: channel multiplier (channels rounded to multiples of 8).
        cifar_stride: stride-1 stem and stride-1 second stage (total stride 8 instead of 32), for
            32x32 inputs.
        last_channel: width of the final 1x1 conv before pooling (scaled by ``max(1, width)``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: float = 1.0,
        cifar_stride: bool = True,
        last_channel: int = 1280,
    ) -> None:
        super().__init__()
        stem_ch = make_divisible(32 * width, 8)
        head_ch = make_divisible(last_channel * max(1.0, width), 8)
        layers: list[nn.Module] = [conv_bn(in_channels, stem_ch, 3, stride=1 if cifar_stride else 2, act=nn.ReLU6)]
        cin = stem_ch
        for idx, (t, c, n, s) in enumerate(MBV2_SETTINGS):
            cout = make_divisible(c * width, 8)
            if cifar_stride and idx == 1:
                s = 1
            for i in range(n):
                layers.append(inverted_residual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn(cin, head_ch, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(head_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images -> (N, num_classes) logits."""
        return cast(Tensor, self.fc(self.flatten(self.pool(self.features(x)))))


@register_model("mobilenetv2")
def mobilenetv2(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    width: float = 1.0,
    cifar_stride: bool | None = None,
    last_channel: int = 1280,
) -> nn.Module:
    """MobileNetV2; ``cifar_stride`` defaults to ``input_size <= 64`` (total stride 8, else 32)."""
    if not isinstance(width, (int, float)) or isinstance(width, bool) or width <= 0:
        raise ConfigError(f"mobilenetv2 width must be a positive number, got {width!r}")
    if not isinstance(last_channel, int) or last_channel < 1:
        raise ConfigError(f"mobilenetv2 last_channel must be a positive integer, got {last_channel!r}")
    if cifar_stride is None:
        cifar_stride = input_size <= 64
    if input_size < 2:
        raise ConfigError(f"mobilenetv2 needs input_size >= 2, got {input_size}")
    return MobileNetV2(
        in_channels, num_classes, width=width, cifar_stride=bool(cifar_stride), last_channel=last_channel
    )
