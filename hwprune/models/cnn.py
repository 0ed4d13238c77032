"""Plain feed-forward models: MLP, LeNet-5, DigitsCNN and a VGG-style CNN.

All take images ``(N, in_channels, input_size, input_size)`` and return logits ``(N, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from torch import Tensor, nn

from hwprune.base.errors import ConfigError
from hwprune.models.blocks import conv_bn, init_weights, make_divisible
from hwprune.models.registry import register_model

__all__ = ["MLP", "LeNet5", "DigitsCNN", "VGG", "VGG_CONFIGS"]

# Conv widths per stage ("M" = 2x2 max-pool) for the usual VGG depths (conv layers + 3 FC).
VGG_CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


def _check_width(width: float) -> None:
    if not isinstance(width, (int, float)) or isinstance(width, bool) or width <= 0:
        raise ConfigError(f"width must be a positive number, got {width!r}")


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] * len(hidden) -> Linear(num_classes)."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, int(h)), nn.ReLU()]
            prev = int(h)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images -> (N, num_classes) logits."""
        return cast(Tensor, self.fc(self.features(x)))


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> FC 120 -> 84 -> classes.

    Padding adapts to small inputs: conv1 pads by 2 when ``input_size < 32`` (28x28 MNIST gives the
    classic 16x5x5 = 400 flatten), conv2 pads by 2 when its input is smaller than 6 (8x8 digits).
    """

    def __init__(self, in_channels: int, input_size: int, num_classes: int, bn: bool = False) -> None:
        super().__init__()
        if input_size < 8:
            raise ConfigError(f"lenet5 needs input_size >= 8, got {input_size}")
        p1 = 2 if input_size < 32 else 0
        s = (input_size + 2 * p1 - 4) // 2
        p2 = 2 if s < 6 else 0
        s = (s + 2 * p2 - 4) // 2

        def block(cin: int, cout: int, pad: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 5, padding=pad, bias=not bn)]
            if bn:
                layers.append(nn.BatchNorm2d(cout))
            return layers + [nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(in_channels, 6, p1), *block(6, 16, p2))
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * s * s, 120)
        self.fc2 = nn.Linear(120, 84)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images -> (N, num_classes) logits."""
        x = self.flatten(self.features(x))
        return cast(Tensor, self.fc(self.relu(self.fc2(self.relu(self.fc1(x))))))


class DigitsCNN(nn.Module):
    """Small CNN for 8x8 digits: conv c1 -> conv c2 -> max-pool -> conv c2 -> GAP -> FC.

    Convs are 3x3 + BN + ReLU; widths ``(32, 64, 64) * width`` rounded to multiples of 16.
    """

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        _check_width(width)
        c1, c2 = make_divisible(32 * width, 16), make_divisible(64 * width, 16)
        self.features = nn.Sequential(
            conv_bn(in_channels, c1, 3),
            conv_bn(c1, c2, 3),
            nn.MaxPool2d(2),
            conv_bn(c2, c2, 3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images -> (N, num_classes) logits."""
        return cast(Tensor, self.fc(self.flatten(self.pool(self.features(x)))))


class VGG(nn.Module):
    """VGG-style CNN: 3x3 conv-BN-ReLU stages with max-pools, global average pool, linear head.

    A pool is skipped when the feature map is already 1x1, so small inputs (8x8) work too.
    """

    def __init__(
        self, in_channels: int, input_size: int, num_classes: int, depth: int = 11, width: float = 1.0
    ) -> None:
        super().__init__()
        _check_width(width)
        if depth not in VGG_CONFIGS:
            raise ConfigError(f"vgg depth must be one of {sorted(VGG_CONFIGS)}, got {depth!r}")
        layers: list[nn.Module] = []
        cin, size = in_channels, input_size
        for item in VGG_CONFIGS[depth]:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            cout = make_divisible(int(item) * width, 8)
            layers.append(conv_bn(cin, cout, 3))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images -> (N, num_classes) logits."""
        return cast(Tensor, self.fc(self.flatten(self.pool(self.features(x)))))


def _finish(model: nn.Module) -> nn.Module:
    init_weights(model)
    return model


@register_model("mlp")
def mlp(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, hidden: Sequence[int] = (256, 128)
) -> nn.Module:
    """MLP on flattened images; ``hidden`` lists the hidden layer widths."""
    if isinstance(hidden, (str, bytes)) or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ConfigError(f"mlp hidden must be a sequence of positive integers, got {hidden!r}")
    return _finish(MLP(in_channels * input_size * input_size, tuple(hidden), num_classes))


@register_model("lenet5")
def lenet5(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, bn: bool = False) -> nn.Module:
    """LeNet-5 (61.7k params at 1x28x28, 10 classes); ``bn`` adds BatchNorm after each conv."""
    return _finish(LeNet5(in_channels, input_size, num_classes, bn=bool(bn)))


@register_model("digits_cnn")
def digits_cnn(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> nn.Module:
    """DigitsCNN (embedded default for 8x8 digits); works for any ``input_size >= 2``."""
    if input_size < 2:
        raise ConfigError(f"digits_cnn needs input_size >= 2, got {input_size}")
    return _finish(DigitsCNN(in_channels, num_classes, width=width))


@register_model("vgg")
def vgg(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, depth: int = 11, width: float = 1.0
) -> nn.Module:
    """VGG-``depth`` (11/13/16/19) with BN, GAP head and channel ``width`` multiplier (multiples of 8)."""
    return _finish(VGG(in_channels, input_size, num_classes, depth=depth, width=width))
