"""Small vision transformers for tests and demos: ``vit_tiny`` (ViT with ``nn.MultiheadAttention``).

Same structure as torchvision's ``VisionTransformer`` (Dosovitskiy et al. 2021): a patch embedding
convolution ``conv_proj`` (kernel = stride = ``patch``), a class token and a learned position
embedding (bare ``nn.Parameter`` s), ``depth`` pre-norm encoder blocks (LayerNorm ->
``nn.MultiheadAttention`` -> residual add; LayerNorm -> ``mlp`` = Linear(dim, mlp_ratio*dim) ->
GELU -> Linear -> residual add), a final LayerNorm and a Linear ``fc`` on the class token.
Under a hardware profile with ``head`` and ``mlp_block`` rules, the attention heads and the MLP
hidden widths are prunable; the residual stream (LayerNorm'd) stays dense.

At the defaults (dim 64, 4 heads, depth 4, 28x28 inputs with patches of 4) it has about 0.2 M
parameters and trains on Fashion-MNIST on 2 CPU cores.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from hwprune.base.errors import ConfigError
from hwprune.models.registry import register_model

__all__ = ["EncoderBlock", "VisionTransformer"]


class EncoderBlock(nn.Module):
    """Pre-norm transformer block on ``(N, T, dim)`` tokens (attention + MLP, both residual)."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, dim) -> (N, T, dim)."""
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return cast(Tensor, x + self.mlp(self.ln_2(x)))


class VisionTransformer(nn.Module):
    """``(N, in_channels, S, S)`` images -> ``(N, num_classes)`` logits (see module docstring)."""

    def __init__(self, *, num_classes: int, in_channels: int, input_size: int, patch: int, dim: int, depth: int,
                 heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if input_size % patch:
            raise ConfigError(f"vit: input_size {input_size} is not a multiple of patch {patch}")
        if dim % heads:
            raise ConfigError(f"vit: dim {dim} is not a multiple of heads {heads}")
        tokens = (input_size // patch) ** 2 + 1
        self.conv_proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        self.layers = nn.Sequential(*[EncoderBlock(dim, heads, int(round(mlp_ratio * dim))) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, S, S) -> (N, num_classes)."""
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        x = self.ln(self.layers(x))
        return cast(Tensor, self.fc(x[:, 0]))


def _check(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"vit_tiny: {name} must be a positive integer, got {value!r}")
    return value


@register_model("vit_tiny")
def vit_tiny(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, patch: int = 4, dim: int = 64,
             depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0) -> nn.Module:
    """Tiny ViT: patches of ``patch``, ``depth`` blocks of width ``dim`` with ``heads`` heads, MLP ``mlp_ratio*dim``."""
    for name, value in (("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads)):
        _check(value, name)
    if not isinstance(mlp_ratio, (int, float)) or isinstance(mlp_ratio, bool) or mlp_ratio <= 0:
        raise ConfigError(f"vit_tiny: mlp_ratio must be a positive number, got {mlp_ratio!r}")
    return VisionTransformer(num_classes=num_classes, in_channels=in_channels, input_size=input_size, patch=patch,
                             dim=dim, depth=depth, heads=heads, mlp_ratio=float(mlp_ratio))
