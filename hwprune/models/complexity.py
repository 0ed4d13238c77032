"""Parameter and MAC counting: every matrix product of one forward pass (convs, Linear, attention).

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2), which sees the ATen ops
themselves, so functional layers and attention count as well as ``nn.Conv2d``/``nn.Linear``:
convolutions ``out.numel() * (C_in/groups) * kH * kW``, matrix products ``m * n * k`` (Linear,
``q @ k^T``, ``attn @ v``), and ``scaled_dot_product_attention`` (two products per head; CPU's
fused kernel is added here, torch does not count it). ``nn.MultiheadAttention``'s fused inference
fast path is switched off while counting so its projections are seen. Biases, norms, activations,
softmax and pools are not counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["count_params_and_macs", "count_macs"]

_aten = torch.ops.aten


def _sdpa_flops(q: Any, k: Any, v: Any, *_args: Any, out_shape: Any = None, **_kwargs: Any) -> int:
    return int(sdpa_flop_count(q, k, v))  # type: ignore[no-untyped-call]


_EXTRA = {op: _sdpa_flops for op in (getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None),)
          if op is not None}


@contextlib.contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


def count_macs(model: nn.Module, example_input: Tensor | tuple[Tensor, ...]) -> int:
    """Multiply-accumulates per sample of one forward pass (see module docstring).

    The total over the batch is divided by the batch size N of ``example_input`` (``(N, C, H, W)``
    or ``(N, ...)``). Runs in eval mode under ``no_grad``; the model's train/eval mode is restored.
    """
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() > 0 else 1
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _no_mha_fastpath(), FlopCounterMode(display=False, custom_mapping=_EXTRA) as fc:
            model(*inputs)
    finally:
        model.train(was_training)
    return int(fc.get_total_flops()) // 2 // max(batch, 1)


def count_params_and_macs(model: nn.Module, example_input: Tensor | tuple[Tensor, ...]) -> tuple[int, int]:
    """``(params, macs)``: number of parameter elements, and :func:`count_macs` per sample."""
    return sum(p.numel() for p in model.parameters()), count_macs(model, example_input)
