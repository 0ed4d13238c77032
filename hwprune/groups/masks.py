"""Per-module groups (internal to ``hwprune.groups.groupset``): rule lookup, ``layer`` branches, masks, N:M.

* ``layer``: the parameters of a residual block's ``branch`` form one removable group (block
  protocol of ``hwprune.models.blocks``: attributes ``branch``, ``shortcut``, ``act``).
* ``kernel_shape``: ``W[:, c, i, j]`` of one conv (a Linear's input column ``W[:, c]``); a mask.
* ``unstructured``: one group per weight element; a mask.
* ``nm``: singleton groups; each block of M consecutive *input* channels at fixed ``(k, r, s)``
  (NVIDIA ASP layout; Linear: M consecutive inputs) is its own scope with ``k = N``. A layer whose
  input width is not a multiple of M uses the rule's fallback, else stays dense with a warning
  (like ASP, which skips such layers) -- the stem conv with 3 inputs is the usual case.

Only weights carry mask and N:M groups; biases stay ungrouped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from hwprune.base.errors import ConfigError
from hwprune.groups.segments import Claims, Entry, Layout, Segment, conv_or_linear, macs_per_out_channel, mro_names
from hwprune.profiles.matching import match_rule
from hwprune.profiles.schema import (
    Granularity,
    HardwareProfile,
    KernelShapeGranularity,
    LayerGranularity,
    LayerRule,
    NMGranularity,
    NoGranularity,
    UnstructuredGranularity,
)

__all__ = ["resolve_rules", "add_layer_groups", "add_mask_groups", "add_nm_groups"]

log = logging.getLogger("hwprune.groups.groupset")

_BLOCK_ATTRS = ("branch", "shortcut", "act")
_MASKS = (KernelShapeGranularity, UnstructuredGranularity)


def resolve_rules(model: nn.Module, profile: HardwareProfile, phase: str) -> dict[str, LayerRule | None]:
    """First matching rule of ``phase`` per named submodule; ConfigError for a non-optional rule matching nothing."""
    records = [(name, mro_names(m)) for name, m in model.named_modules() if name]
    for rule in profile.rules_for_phase(phase):
        if not rule.optional and not any(rule.matches(n, t) for n, t in records):
            raise ConfigError(f"profile '{profile.name}': {phase} rule {rule.match!r} ({rule.granularity.kind}) "
                              f"matches no module of {type(model).__name__}; fix the match or set optional: true")
    return {name: match_rule(profile, phase, name, types) for name, types in records}


def _module_macs(module: nn.Module, spatial: Mapping[str, int], prefix: str) -> float:
    total = 0.0
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            width = m.out_features
        elif isinstance(m, nn.modules.conv._ConvNd) and conv_or_linear(m):
            width = m.out_channels
        else:
            continue
        full = f"{prefix}.{name}" if name else prefix
        total += width * macs_per_out_channel(m, int(spatial.get(full, 1)))
    return total


def add_layer_groups(model: nn.Module, rules: Mapping[str, LayerRule | None], layout: Layout,
                     spatial: Mapping[str, int], claims: Claims) -> None:
    """One removable group per residual branch with a ``layer`` rule; their module names go to ``claims.modules``."""
    claimed = claims.modules
    for name, m in model.named_modules():
        rule = rules.get(name)
        if rule is None or not isinstance(rule.granularity, LayerGranularity):
            continue
        if not all(hasattr(m, a) for a in _BLOCK_ATTRS):
            raise ConfigError(f"module '{name}' ({type(m).__name__}) matched layer rule {rule.match!r} but is not a "
                              "residual block (needs attributes branch, shortcut, act); match residual blocks only")
        if name in claimed:
            raise ConfigError(f"layer rule {rule.match!r}: block '{name}' is nested inside another layer-grouped "
                              "branch")
        branch = getattr(m, "branch")  # noqa: B009 - block protocol attribute, checked above
        if branch is None:
            layout.dense.append({"layer": name, "reason": "branch already removed"})
            continue
        prefix = f"{name}.branch"
        params = list(branch.named_parameters())
        if not params:
            layout.dense.append({"layer": name, "reason": "branch has no parameters"})
            continue
        gid = layout.reserve(1)
        for pname, p in params:
            layout.add_segment(Segment(f"{prefix}.{pname}", (p.numel(),), (0,), torch.tensor([gid])))
        claimed.update(f"{prefix}.{sub}" if sub else prefix for sub, _ in branch.named_modules())
        layout.entries.append(Entry(
            name=name, kind="layer", granularity="layer", modules=(name,), removable=True, first=gid, count=1,
            channels=[()], macs=torch.tensor([_module_macs(branch, spatial, prefix)], dtype=torch.float64),
            rel_size=torch.ones(1, dtype=torch.float64)))


def _weight_of(name: str, m: nn.Module) -> Tensor:
    w = getattr(m, "weight", None)
    if not isinstance(w, Tensor) or w.dim() < 2:
        dims = w.dim() if isinstance(w, Tensor) else 0
        raise ConfigError(f"layer '{name}' has a {dims}-d weight; mask rules need a conv or Linear weight")
    return w


def add_mask_groups(model: nn.Module, rules: Mapping[str, LayerRule | None], layout: Layout,
                    spatial: Mapping[str, int], claimed: Iterable[str]) -> None:
    """``kernel_shape`` and ``unstructured`` groups on the weights of matching convs/Linear layers."""
    claimed = set(claimed)
    for name, m in model.named_modules():
        rule = rules.get(name)
        if rule is None or not isinstance(rule.granularity, _MASKS) or not conv_or_linear(m):
            continue
        if name in claimed:
            layout.dense.append({"layer": name, "reason": "inside a layer-grouped branch"})
            continue
        w = _weight_of(name, m)
        sp = int(spatial.get(name, 1))
        view: tuple[int, ...]
        red: tuple[int, ...]
        gshape: tuple[int, ...]
        if isinstance(rule.granularity, KernelShapeGranularity):
            cells = w[0].numel()
            view, red, gshape = (int(w.shape[0]), cells), (0,), (1, cells)
            cost = float(w.shape[0] * sp)
            coord = tuple(int(v) for v in w.shape[1:])
        else:
            cells = w.numel()
            view, red, gshape = (cells,), (), (cells,)
            cost = float(sp)
            coord = tuple(int(v) for v in w.shape)
        first = layout.reserve(cells)
        layout.add_segment(Segment(f"{name}.weight", view, red,
                                   torch.arange(first, first + cells, dtype=torch.long).view(gshape)))
        layout.entries.append(Entry(
            name=name, kind=rule.granularity.kind, granularity=rule.granularity.kind, modules=(name,),
            removable=False, first=first, count=cells, macs=torch.full((cells,), cost, dtype=torch.float64),
            rel_size=torch.ones(cells, dtype=torch.float64), coord_shape=coord))


def _nm_granularity(name: str, g: NMGranularity, fb: Granularity | None,
                    width: int) -> tuple[NMGranularity | None, str]:
    if width % g.m == 0:
        return g, ""
    if isinstance(fb, NMGranularity) and width % fb.m == 0:
        return fb, f"fallback nm({fb.n}:{fb.m})"
    log.warning("groups: layer '%s' has %d input channels, not a multiple of M=%d; it stays dense", name, width, g.m)
    return None, f"{width} inputs not a multiple of M={g.m}"


def add_nm_groups(model: nn.Module, rules: Mapping[str, LayerRule | None], layout: Layout) -> None:
    """N:M phase: element groups, one scope per block of M consecutive inputs (see module docstring)."""
    for name, m in model.named_modules():
        rule = rules.get(name)
        if rule is None or isinstance(rule.granularity, NoGranularity) or not conv_or_linear(m):
            continue
        if not isinstance(rule.granularity, NMGranularity):
            raise ConfigError(f"rule {rule.match!r} has kind '{rule.granularity.kind}' in the nm phase; use nm or none")
        w = _weight_of(name, m)
        g, note = _nm_granularity(name, rule.granularity, rule.fallback, int(w.shape[1]))
        if g is None:
            layout.dense.append({"layer": name, "reason": note})
            continue
        k_out, width = int(w.shape[0]), int(w.shape[1])
        rs = w[0, 0].numel()
        cb, mm = width // g.m, g.m
        count = w.numel()
        first = layout.reserve(count)
        # element (k, cb, m, rs) -> scope ((k*CB + cb)*RS + rs), position m: gid = first + scope*M + m
        scope = torch.arange(k_out * cb * rs, dtype=torch.long).view(k_out, cb, 1, rs)
        gid = first + scope * mm + torch.arange(mm, dtype=torch.long).view(1, 1, mm, 1)
        layout.add_segment(Segment(f"{name}.weight", (k_out, cb, mm, rs), (), gid))
        layout.entries.append(Entry(
            name=name, kind="nm", granularity=f"nm({g.n}:{g.m})", modules=(name,), removable=False, first=first,
            count=count, local_scope=torch.arange(count, dtype=torch.long) // mm, num_local_scopes=count // mm,
            coord_shape=(k_out, cb, rs, mm), k_fixed=g.n, note=note))

