"""Parameter and MAC counting with forward hooks (Conv2d incl. groups, Linear; BN/activations free)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["count_params_and_macs"]


def count_params_and_macs(model: nn.Module, example_input: Tensor | tuple[Tensor, ...]) -> tuple[int, int]:
    """Count parameters and per-sample multiply-accumulates of one forward pass.

    MACs: ``Conv2d`` -> ``out.numel() * (C_in / groups) * kH * kW``; ``Linear`` ->
    ``out.numel() * in_features``; biases, BatchNorm, activations and pools are not counted. The
    total is divided by the batch size N of ``example_input`` (``(N, C, H, W)``), as
    ``torch_pruning.utils.count_ops_and_params`` does. The model's train/eval mode is restored.

    Returns:
        ``(params, macs)``: number of parameter elements, MACs per sample.
    """
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() > 0 else 1
    total = 0

    def conv_hook(module: nn.Module, _inp: Any, out: Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        total += out.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Module, _inp: Any, out: Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += out.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return params, total // max(batch, 1)
