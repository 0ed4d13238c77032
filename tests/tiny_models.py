"""Deterministic tiny networks (< 50k parameters) that stress channel coupling.

``TINY_MODELS[name](seed=0)`` builds a model in eval mode with randomised BatchNorm statistics and
affine parameters (so a channel left with a nonzero beta would show in the output);
``example_input(name)`` is the matching seeded input batch (1x3x16x16, or 1x3x32x32).
Reused by the groups and surgery tests: ``from tests.tiny_models import TINY_MODELS, example_input``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["TINY_MODELS", "INPUT_SIZES", "example_input", "TinyBlock", "count_params"]


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ConvChain(nn.Module):
    """conv-BN-ReLU x2 -> GAP -> Linear (input 1x3x16x16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class ResidualDown(nn.Module):
    """Stem, then a stride-2 residual block with a 1x1 conv-BN downsample shortcut (add partners)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 8)
        self.conv_a = _cbr(8, 16, stride=2)
        self.conv_b = _cbr(16, 16, act=False)
        self.down = _cbr(8, 16, k=1, stride=2, act=False)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.stem(x)
        y = torch.relu(self.conv_b(self.conv_a(x)) + self.down(x))
        return self.fc(y.mean((2, 3)))


class ConcatNet(nn.Module):
    """Two branches (8 and 16 channels) concatenated, BN over the concat, 1x1 conv, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 8)
        self.branch_a = nn.Conv2d(8, 8, 3, padding=1)
        self.branch_b = nn.Conv2d(8, 16, 1)
        self.bn = nn.BatchNorm2d(24)
        self.mix = _cbr(24, 16, k=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.stem(x)
        x = torch.relu(self.bn(torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)))
        return self.fc(self.mix(x).mean((2, 3)))


class DepthwiseGrouped(nn.Module):
    """conv -> depthwise 3x3 -> grouped 1x1 (groups=4) -> conv -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.dw = _cbr(16, 16, groups=16)
        self.gconv = _cbr(16, 16, k=1, groups=4)
        self.pw = _cbr(16, 8, k=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.fc(self.pw(self.gconv(self.dw(self.stem(x)))).mean((2, 3)))


class MLP(nn.Module):
    """Flatten 3x16x16 -> Linear-BN1d-ReLU -> Linear-ReLU -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(768, 32)
        self.bn1 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 24)
        self.fc3 = nn.Linear(24, 10)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = torch.relu(self.bn1(self.fc1(x.flatten(1))))
        return self.fc3(torch.relu(self.fc2(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project (+ identity add when shapes match)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = nn.Sequential(nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid),
                                nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.use_res else y


class TinyMobileNet(nn.Module):
    """Stem 3->16 (stride 2), IR 16->16 (residual), IR 16->24 (stride 2), 1x1 24->32, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.block1 = InvertedResidual(16, 16, 1, 2)
        self.block2 = InvertedResidual(16, 24, 2, 2)
        self.last = nn.Sequential(nn.Conv2d(24, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.last(self.block2(self.block1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class TinyBlock(nn.Module):
    """Block protocol: ``act(shortcut(x) + branch(x))``; ``act(shortcut(x))`` when ``branch is None``."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.branch: nn.Module | None = nn.Sequential(_cbr(cin, cout, stride=stride), _cbr(cout, cout, act=False))
        self.shortcut: nn.Module = (_cbr(cin, cout, k=1, stride=stride, act=False)
                                    if stride != 1 or cin != cout else nn.Identity())
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.branch is None:
            return self.act(self.shortcut(x))
        return self.act(self.shortcut(x) + self.branch(x))


class TinyResNet(nn.Module):
    """Stem 3->8, blocks 8->8, 8->16 (stride 2, 1x1 shortcut), 16->16, GAP, head (input 1x3x32x32)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 8)
        self.layer1 = TinyBlock(8, 8)
        self.layer2 = TinyBlock(8, 16, stride=2)
        self.layer3 = TinyBlock(16, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
    return model.eval()


def _factory(cls: Callable[[], nn.Module]) -> Callable[..., nn.Module]:
    def make(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return _randomise(cls(), seed)
    make.__name__ = f"make_{cls.__name__}"
    make.__doc__ = cls.__doc__
    return make


TINY_MODELS: dict[str, Callable[..., nn.Module]] = {
    "chain": _factory(ConvChain),
    "residual": _factory(ResidualDown),
    "concat": _factory(ConcatNet),
    "depthwise_grouped": _factory(DepthwiseGrouped),
    "mlp": _factory(MLP),
    "mobilenet": _factory(TinyMobileNet),
    "resnet": _factory(TinyResNet),
}

INPUT_SIZES: dict[str, int] = {name: 16 for name in TINY_MODELS} | {"resnet": 32}


def example_input(name: str, batch: int = 1, seed: int = 0) -> Tensor:
    """Seeded ``(batch, 3, S, S)`` input for ``TINY_MODELS[name]`` (S from ``INPUT_SIZES``)."""
    s = INPUT_SIZES[name]
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(seed))


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
