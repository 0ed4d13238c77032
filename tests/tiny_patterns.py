"""Tiny networks with the patterns real architectures bring (torchvision ShuffleNet, ConvNeXt, ViT, timm/HF attention).

``PATTERNS[name]()`` returns ``(model, example_input)`` in eval mode with norm statistics, layer
scales and heads randomised (so a wrongly removed channel or head shows in the output):

* ``shuffle``: ShuffleNetV2 units (``chunk`` along channels, ``cat``, channel shuffle by view/transpose);
* ``layer_scale``: a conv-BN residual stream multiplied by a bare ``(C, 1, 1)`` parameter (grouped, sliced);
* ``tokens``: patch embedding + class token + position embedding (bare parameters) without LayerNorm;
* ``mha``: ``vit_tiny`` (``nn.MultiheadAttention``, packed ``in_proj_weight``, LayerNorm residual stream);
* ``qkv``: attention with separate q/k/v/out ``Linear`` modules and ``num_heads``/``head_dim`` attributes;
* ``packed_qkv``: the same with one ``qkv`` Linear (timm layout);
* ``convnext``: ``convnext_nano`` (depthwise 7x7, LayerNorm, layer scale, MLP).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from hwprune.models import create_model

__all__ = ["PATTERNS", "SeparateQKVAttention", "PackedQKVAttention"]


def _cbr(cin: int, cout: int, k: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 stride-1 unit on ``c`` channels: half passes, half goes through 1x1-dw3x3-1x1, then shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(_cbr(h, h), _cbr(h, h, 3, groups=h, act=False), _cbr(h, h))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat([x1, self.branch(x2)], dim=1)
        b, c, hh, ww = out.shape
        return out.view(b, 2, c // 2, hh, ww).transpose(1, 2).contiguous().view(b, c, hh, ww)


class ShuffleNet(nn.Module):
    """Stem 3->16, two shuffle units, 1x1 16->32, GAP, fc (input 1x3x16x16)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, 3)
        self.units = nn.Sequential(ShuffleUnit(16), ShuffleUnit(16))
        self.last = _cbr(16, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.fc(self.last(self.units(self.stem(x))).mean((2, 3)))


class LayerScaleNet(nn.Module):
    """Stem conv-BN, residual ``relu(x + gamma * bn(conv(x)))`` with a bare (C, 1, 1) ``gamma``, 1x1 conv, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, 3)
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.gamma = nn.Parameter(torch.ones(16, 1, 1))
        self.last = _cbr(16, 24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.stem(x)
        x = torch.relu(x + self.gamma * self.bn(self.conv(x)))
        return self.fc(self.last(x).mean((2, 3)))


class TokenNet(nn.Module):
    """Patches of 4 -> 16-d tokens, class token + position embedding, residual MLP (no LayerNorm), fc on token 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, 16, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 16))
        self.pos = nn.Parameter(torch.zeros(1, 17, 16))
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        return self.fc(x[:, 0])


class SeparateQKVAttention(nn.Module):
    """HF-style self-attention: ``q``/``k``/``v``/``out`` Linear layers, reshaped with ``num_heads``/``head_dim``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim ** -0.5, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class PackedQKVAttention(nn.Module):
    """timm-style self-attention: one ``qkv`` Linear with rows ``(3, num_heads, head_dim)`` and ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class AttentionNet(nn.Module):
    """Patch tokens -> LN -> attention (``attn``) -> residual -> LN -> ``mlp`` -> residual -> mean -> fc."""

    def __init__(self, attn: nn.Module, dim: int = 32) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, 4, stride=4)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = attn
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.fc = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.fc(x.mean(1))


@torch.no_grad()
def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics, norm affines, layer scales and token parameters (nothing trivially zero)."""
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    for name, p in model.named_parameters():
        leaf = name.split(".")[-1]
        if leaf == "gamma" or (p.dim() == 1 and leaf == "weight"):
            p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=gen))  # norm affines and layer scales
        elif p.dim() <= 1 or leaf in ("cls", "pos", "class_token", "pos_embedding"):
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))  # biases and token parameters
    return model.eval()


def _make(build: Callable[[], nn.Module], size: int = 16) -> Callable[[int], tuple[nn.Module, Tensor]]:
    def make(seed: int = 0) -> tuple[nn.Module, Tensor]:
        torch.manual_seed(seed)
        model = _randomise(build(), seed)
        return model, torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return make


PATTERNS: dict[str, Callable[..., tuple[nn.Module, Tensor]]] = {
    "shuffle": _make(ShuffleNet),
    "layer_scale": _make(LayerScaleNet),
    "tokens": _make(TokenNet),
    "mha": _make(lambda: create_model("vit_tiny", input_size=16, dim=32, depth=2, heads=4)),
    "qkv": _make(lambda: AttentionNet(SeparateQKVAttention(32, 4))),
    "packed_qkv": _make(lambda: AttentionNet(PackedQKVAttention(32, 4))),
    "convnext": _make(lambda: create_model("convnext_nano", input_size=16, dims=[8, 16], depths=[1, 1])),
}
