"""Internal containers shared by the group builders (``hwprune.groups.groupset`` and its helpers).

A *segment* says how one parameter tensor is cut into group elements: the parameter is viewed as
``view_shape``, squares are summed over ``reduce_dims`` (kept with size 1), and ``gid`` (a long
tensor of the reduced shape) names the group of every reduced cell (``-1``: not grouped). Every
parameter has at most one segment, so one parameter element belongs to at most one group.

An *entry* is one row of the summary: the groups of one coupled channel set, one masked layer or
one residual block, with consecutive group ids ``first .. first + count - 1``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hwprune.base.errors import ConfigError
from hwprune.models.attention import attention_spec

__all__ = [
    "Claims",
    "Segment",
    "Entry",
    "Layout",
    "channel_view",
    "preserve_mode",
    "run_model",
    "record_spatial",
    "mro_names",
    "conv_or_linear",
    "macs_per_out_channel",
    "macs_per_in_column",
    "macs_per_weight",
]


@dataclass
class Segment:
    """One parameter cut into group cells (see module docstring)."""

    param: str
    view_shape: tuple[int, ...]
    reduce_dims: tuple[int, ...]
    gid: Tensor  # long, view_shape with reduce_dims set to 1; -1 = ungrouped cell

    def cell_size(self) -> int:
        """Number of parameter elements per cell (product of the reduced dims)."""
        return math.prod(self.view_shape[d] for d in self.reduce_dims)


@dataclass
class Entry:
    """Groups of one layer / coupled set; ``channels[i]`` belongs to group ``first + i``.

    ``macs`` (count,) float64 holds the MACs removed with each group (for ``weight_mode=flops``);
    ``rel_size`` (count,) the group's channel count relative to the nominal block (latency
    weights of a smaller remainder block are scaled by it). ``local_scope`` (count,) long splits
    the entry into several scopes (N:M blocks, each with fixed ``k_fixed``); ``None`` means one
    scope for the whole entry. ``coord_shape`` decodes a mask group's local index into coordinates.
    """

    name: str
    kind: str
    granularity: str
    modules: tuple[str, ...]
    removable: bool
    first: int
    count: int
    channels: list[tuple[int, ...]] | None = None
    consumers: tuple[str, ...] = ()
    macs: Tensor | None = None
    rel_size: Tensor | None = None
    local_scope: Tensor | None = None
    num_local_scopes: int = 1
    coord_shape: tuple[int, ...] = ()
    k_fixed: int | None = None
    note: str = ""


@dataclass
class Claims:
    """What earlier builders took: module names inside ``layer`` branches, parameters of ``head`` groups.

    Channel sets touching a claimed module or parameter stay dense (their elements are grouped already).
    """

    modules: set[str] = field(default_factory=set)
    params: set[str] = field(default_factory=set)


@dataclass
class Layout:
    """Everything a builder found: segments, entries and the reasons some layers stay dense."""

    segments: list[Segment] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    dense: list[dict[str, Any]] = field(default_factory=list)
    num_groups: int = 0

    def reserve(self, count: int) -> int:
        """Allocate ``count`` consecutive group ids; returns the first."""
        first = self.num_groups
        self.num_groups += count
        return first

    def add_segment(self, seg: Segment) -> None:
        """Add a segment; a parameter may own only one segment (disjointness by construction)."""
        if any(s.param == seg.param for s in self.segments):
            raise AssertionError(f"parameter {seg.param} would belong to two group segments (overlap)")
        self.segments.append(seg)


def channel_view(shape: Sequence[int], dim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """View ``(outer, C, inner)`` of a tensor whose channel axis is ``dim``; reduce dims ``(0, 2)``."""
    shape = tuple(int(s) for s in shape)
    return (math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])), (0, 2)


@contextlib.contextmanager
def preserve_mode(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's ``training`` flag afterwards (Torch-Pruning calls ``model.eval()``)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def run_model(model: nn.Module, example_inputs: Any) -> Any:
    """Call ``model`` on a tensor, a tuple/list of positional inputs or a dict of keyword inputs."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def _hook_width(m: nn.Module) -> tuple[int, int] | None:
    """(output width, batch axis) of modules whose positions are recorded, else None."""
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.out_channels, 0
    if isinstance(m, nn.Linear):
        return m.out_features, 0
    spec = attention_spec(m)
    if isinstance(spec, str):
        return None
    width = next(sl.view[0] for sl in spec.slices if sl.param == f"{spec.out}.weight")
    return width, 0 if getattr(m, "batch_first", True) else 1


def record_spatial(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """Output positions per sample of every conv/linear/attention module (H_out*W_out, or tokens).

    Runs one forward pass in eval mode under ``no_grad``; training flags are restored.

    Raises:
        ConfigError: the model fails on ``example_inputs`` (one line with the input shape and the error).
    """
    spatial: dict[str, int] = {}
    hooks = []

    def make_hook(name: str, channels: int, batch_axis: int) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            out = out[0] if isinstance(out, (tuple, list)) else out
            per_sample = out.numel() // max(int(out.shape[batch_axis]), 1) if out.dim() > 1 else out.numel()
            spatial[name] = max(per_sample // max(channels, 1), 1)
        return hook

    for name, m in model.named_modules():
        found = _hook_width(m)
        if found is not None:
            hooks.append(m.register_forward_hook(make_hook(name, *found)))
    try:
        with preserve_mode(model), torch.no_grad():
            model.eval()
            run_model(model, example_inputs)
    except Exception as exc:  # noqa: BLE001 - re-raised in the user's terms
        shape = tuple(example_inputs.shape) if isinstance(example_inputs, Tensor) else type(example_inputs).__name__
        raise ConfigError(f"{type(model).__name__} fails on an example input of shape {shape} "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); pass an input the model "
                          "accepts") from exc
    finally:
        for h in hooks:
            h.remove()
    return spatial


def mro_names(module: nn.Module) -> tuple[str, ...]:
    """Class names along the module's MRO (what ``profiles.match_rule`` matches type rules on)."""
    return tuple(c.__name__ for c in type(module).__mro__)


def conv_or_linear(module: nn.Module) -> bool:
    """True for (non-transposed) convolutions and Linear layers: the modules rules apply to."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return not module.transposed
    return isinstance(module, nn.Linear)


def _kernel(module: nn.Module) -> int:
    return math.prod(module.kernel_size) if isinstance(module, nn.modules.conv._ConvNd) else 1


def macs_per_out_channel(module: nn.Module, spatial: int) -> float:
    """MACs per sample producing one output channel (``C_in/groups * k * HW_out``)."""
    if isinstance(module, nn.Linear):
        return float(module.in_features * spatial)
    if isinstance(module, nn.modules.conv._ConvNd):
        return float(module.in_channels // module.groups * _kernel(module) * spatial)
    raise TypeError(f"not a conv or Linear layer: {type(module).__name__}")


def macs_per_in_column(module: nn.Module, spatial: int) -> float:
    """MACs per sample that consume one input channel / feature (``O/groups * k * HW_out``)."""
    if isinstance(module, nn.Linear):
        return float(module.out_features * spatial)
    if isinstance(module, nn.modules.conv._ConvNd):
        return float(module.out_channels // module.groups * _kernel(module) * spatial)
    raise TypeError(f"not a conv or Linear layer: {type(module).__name__}")


def macs_per_weight(module: nn.Module, spatial: int) -> float:
    """MACs per sample that use one weight element (``HW_out``, tokens for a Linear)."""
    return float(spatial)
