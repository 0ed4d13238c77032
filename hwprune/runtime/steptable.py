"""Latency tables that follow the measured width staircase, and the per-layer kept-width report.

``StepLatencyTable`` is a ``LatencyTable`` whose ``cost(layer, w)`` is the measured curve at
``step_width(w, block)``: a width between two multiples of the layer kind's calibrated block costs
like the next multiple (``hwprune.runtime.staircase``). ``layer_kind`` maps a layer signature to the
calibration's kinds (a depthwise conv is ``depthwise``; a Linear fed tokens, i.e. a (T, F) input, is
``attention_mlp``). ``kept_vs_staircase`` lists, per layer of a pruned model, the kept width against
the staircase (the report's section).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hwprune.runtime.latency import LatencyTable, LayerSpec
from hwprune.runtime.staircase import step_width

__all__ = ["StepLatencyTable", "layer_kind", "module_kind", "kept_vs_staircase"]


def layer_kind(spec: LayerSpec) -> str:
    """``conv``, ``depthwise``, ``linear`` or ``attention_mlp`` (a Linear on a (T, F) token input)."""
    if spec.kind == "linear":
        return "attention_mlp" if len(spec.input_shape) >= 2 else "linear"
    return "depthwise" if spec.depthwise else "conv"


def module_kind(module: nn.Module) -> str | None:
    """Calibration kind of a Conv2d / Linear module (None for other modules); Linear counts as ``linear``."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        dw = module.groups == module.in_channels == module.out_channels and module.groups > 1
        return "depthwise" if dw else "conv"
    return None


@dataclass
class StepLatencyTable(LatencyTable):
    """A ``LatencyTable`` whose costs follow the staircase: ``blocks`` maps a layer kind to its block."""

    blocks: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: LatencyTable, blocks: Mapping[str, int]) -> StepLatencyTable:
        """Wrap ``table`` (same curves and meta) with the calibrated ``blocks`` per kind."""
        return cls(table.layers, {**table.meta, "staircase": dict(blocks)}, dict(blocks))

    def block(self, layer: str) -> int:
        """Staircase block of ``layer``'s kind (1 when the kind was not calibrated)."""
        return int(self.blocks.get(layer_kind(self._curve(layer).spec), 1))

    def cost(self, layer: str, width: float) -> float:
        """Latency (ms) at ``width``, costed as the next multiple of the layer's block (at most full width)."""
        c = self._curve(layer)
        return super().cost(layer, step_width(width, self.block(layer), c.spec.out_channels))

    def input_fraction(self, layer: str, kept: float, total: float) -> float:
        """Kept input channels count as the next multiple of the layer's block (the probes time layer pairs)."""
        return super().input_fraction(layer, step_width(kept, self.block(layer), int(total)), total)


def kept_vs_staircase(model: nn.Module, widths: Sequence[Mapping[str, Any]],
                      blocks: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per pruned layer: kind, full and kept width, staircase block, the step it costs like, on-step or not.

    Args:
        model: the dense model (for the layer kinds).
        widths: the surgery plan's ``widths`` rows (``module``, ``before``, ``after``).
        blocks: calibrated block per kind (``CalibrationInfo.blocks``).

    Returns:
        Rows ``{module, kind, before, after, block, step_width, on_step, idle_channels}``; ``on_step`` is
        True when the kept width is a multiple of the block or the full width; ``idle_channels`` is how
        many channels the runtime computes anyway (``step_width - after``).
    """
    mods = dict(model.named_modules())
    rows = []
    for w in widths:
        name = str(w.get("module"))
        kind = module_kind(mods[name]) if name in mods else None
        if kind is None:
            continue
        before, after = int(w["before"]), int(w["after"])
        b = int(blocks.get(kind, 1))
        step = step_width(after, b, before)
        rows.append({"module": name, "kind": kind, "before": before, "after": after, "block": b, "step_width": step,
                     "on_step": after % b == 0 or after == before, "idle_channels": step - after})
    return rows


