"""Structured channel groups from Torch-Pruning's dependency graph (internal to ``hwprune.groups.groupset``).

For every coupled set of output channels (``DependencyGraph.get_all_groups`` rooted at convs and
Linear layers) the rule is resolved from the producer layers of the set:

* a ``none`` rule on any producer module (conv, linear, norm, ...) keeps the whole set dense;
* the set is grouped only if at least one producer conv/linear has a ``channel`` or
  ``channel_block`` rule; producers without a rule are grouped with it (exact removal needs every
  producer slice). A producer with a mask rule (``kernel_shape``/``unstructured``) in the same set
  is a ConfigError: the elements would belong to two groups;
* different blocks among the producers combine to their least common multiple, so the kept width
  is a multiple of every requested block. A block that does not divide the width uses the rule's
  ``fallback`` (``channel``, ``channel_block`` or ``none``), else ConfigError naming layer and width
  (``allow_remainder=True`` instead makes the last block smaller);
* a set coupled to the model output (e.g. the classifier's logits) or touching a ``layer``-grouped
  residual branch stays dense.

Grouped convolutions (``1 < groups < out_channels``) are handled by "orbits": Torch-Pruning removes
the same relative positions from every conv group (``ConvPruner.prune_in_channels`` keeps
``keep_idxs[:n // groups]``), so a removable unit is channel ``j`` of every conv group together.
Consumers' input columns are never grouped (the WGSEF needs a partition; surgery removes them).
GroupNorm/LayerNorm gamma/beta are grouped too, but there zeroing a channel is not exactly its
removal (the norm statistics still count the zero channel); BatchNorm (eval) is exact.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups.segments import (
    Entry,
    Layout,
    Segment,
    channel_view,
    conv_or_linear,
    macs_per_in_column,
    macs_per_out_channel,
    preserve_mode,
)
from hwprune.profiles import LayerRule

__all__ = ["REMOVABLE_KINDS", "MASK_KINDS", "add_channel_sets"]

log = logging.getLogger("hwprune.groups.groupset")

REMOVABLE_KINDS = ("channel", "channel_block")
MASK_KINDS = ("kernel_shape", "unstructured")
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)


@dataclass
class _Member:
    name: str
    module: nn.Module
    idxs: list[int]
    root_idxs: list[int]


@dataclass
class _CoupledSet:
    root: str
    width: int
    producers: list[_Member] = field(default_factory=list)
    consumers: list[_Member] = field(default_factory=list)
    output_coupled: bool = False


def _analyse(dg: Any, group: Any, names: Mapping[nn.Module, str]) -> _CoupledSet:
    root_item = group[0]
    cs = _CoupledSet(root=names[root_item.dep.target.module], width=len(root_item.idxs))
    for item in group:
        dep = item.dep
        node = dep.target
        producer = dg.is_out_channel_pruning_fn(dep.handler)
        if producer and not node.outputs:
            cs.output_coupled = True
        module = node.module
        name = names.get(module) if isinstance(module, nn.Module) else None
        if name is None:
            if isinstance(module, nn.Parameter):
                raise ConfigError(f"a bare nn.Parameter is coupled to the channels of '{cs.root}'; groups "
                                  "support parameters owned by modules only (keep the set dense with a 'none' rule)")
            continue  # torch-pruning's parameter-free ops (concat, add, reshape, output)
        member = _Member(name, module, list(item.idxs), list(item.root_idxs))
        (cs.producers if producer else cs.consumers).append(member)
    return cs


def _atoms(cs: _CoupledSet) -> list[list[int]]:
    """Smallest removable channel sets (root indices): singletons, or orbits across conv groups."""
    parent = list(range(cs.width))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for member, is_out in [(m, True) for m in cs.producers] + [(m, False) for m in cs.consumers]:
        mod = member.module
        if not isinstance(mod, nn.modules.conv._ConvNd) or mod.groups == 1:
            continue
        if is_out and mod.groups == mod.out_channels:
            continue  # depthwise: torch-pruning keeps in == out == groups
        width = mod.out_channels if is_out else mod.in_channels
        per = width // mod.groups
        to_root: dict[int, int] = {}
        for x, r in zip(member.idxs, member.root_idxs, strict=False):
            to_root.setdefault(x, r)
        for x, r in to_root.items():
            for t in range(mod.groups):
                y = x % per + t * per
                if y not in to_root:
                    raise ConfigError(f"grouped conv '{member.name}' (groups={mod.groups}) receives only part of the "
                                      f"channels of '{cs.root}' in some conv groups; keep it dense with a 'none' rule")
                a, b = find(r), find(to_root[y])
                if a != b:
                    parent[max(a, b)] = min(a, b)
    comps: dict[int, list[int]] = {}
    for i in range(cs.width):
        comps.setdefault(find(i), []).append(i)
    return sorted(comps.values(), key=lambda c: c[0])


def _block_of(g: Any) -> int:
    return int(getattr(g, "block", 1))


def _resolve_block(cs: _CoupledSet, rules: Mapping[str, LayerRule], n_atoms: int,
                   allow_remainder: bool) -> tuple[int, str, str] | None:
    """(block, kind, note) for the set, or None when a fallback says ``none``."""
    blocks: list[int] = []
    kind = "channel"
    notes: list[str] = []
    for m in cs.producers:
        rule = rules.get(m.name)
        if rule is None or not conv_or_linear(m.module) or rule.granularity.kind not in REMOVABLE_KINDS:
            continue
        gran = rule.granularity
        b = _block_of(gran)
        if n_atoms % b and not allow_remainder:
            fb = rule.fallback
            units = f"{cs.width} coupled output channels" + (f" ({n_atoms} units over conv groups)"
                                                             if n_atoms != cs.width else "")
            if fb is None:
                raise ConfigError(f"layer '{m.name}': {units} (set rooted at '{cs.root}') are not divisible by "
                                  f"channel_block {b} of rule {rule.match!r}; add a fallback or use a divisor of "
                                  "the width")
            if fb.kind == "none":
                return None
            if fb.kind not in REMOVABLE_KINDS or n_atoms % _block_of(fb):
                raise ConfigError(f"layer '{m.name}': fallback '{fb.kind}' of rule {rule.match!r} cannot group "
                                  f"{units}; use channel, a dividing channel_block, or none")
            notes.append(f"fallback {fb.kind}" + (f"({_block_of(fb)})" if fb.kind == "channel_block" else "")
                         + f" for {m.name}")
            gran, b = fb, _block_of(fb)
        if gran.kind == "channel_block":
            kind = "channel_block"
        blocks.append(b)
    block = math.lcm(*blocks) if blocks else 1
    if n_atoms % block:
        notes.append(f"remainder block of {n_atoms % block}")
    return block, kind, "; ".join(notes)


def _param_dim(name: str, module: nn.Module, pname: str, p: torch.Tensor, root: str) -> int | None:
    """Channel axis of a producer parameter (None: shared scalar, not grouped)."""
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and conv_or_linear(module):
        return 0
    if isinstance(module, _NORMS):
        return p.dim() - 1
    if isinstance(module, nn.PReLU):
        return None if p.numel() == 1 else 0
    raise ConfigError(f"module '{name}' ({type(module).__name__}) is coupled to the channels of '{root}' but groups "
                      "cannot slice it; keep the set dense with a 'none' rule on it")


def add_channel_sets(model: nn.Module, example_inputs: Any, rules: Mapping[str, LayerRule | None],
                     layout: Layout, spatial: Mapping[str, int], claimed: set[str], *,
                     allow_remainder: bool = False) -> None:
    """Append one removable entry per grouped coupled set to ``layout`` (see module docstring).

    ``claimed`` holds module names inside ``layer``-grouped branches (their sets stay dense).
    """
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    with preserve_mode(model), torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    cmaps: dict[str, Segment] = {}
    sets = [_analyse(dg, g, names) for g in dg.get_all_groups(root_module_types=(nn.modules.conv._ConvNd, nn.Linear))]
    sets.sort(key=lambda c: min((order[m.name] for m in c.producers), default=0))  # group ids in model order
    for cs in sets:
        prod_rules = {m.name: rules.get(m.name) for m in cs.producers}
        kinds = {n: r.granularity.kind for n, r in prod_rules.items() if r is not None}
        layer_kinds = {m.name: kinds[m.name] for m in cs.producers if m.name in kinds and conv_or_linear(m.module)}
        if not any(k in REMOVABLE_KINDS for k in layer_kinds.values()):
            continue
        dense = None
        if any(k == "none" for k in kinds.values()):
            dense = "a producer has rule none: " + ", ".join(n for n, k in kinds.items() if k == "none")
        elif cs.output_coupled:
            dense = "coupled to the model output"
        elif any(m.name in claimed for m in cs.producers):
            dense = "touches a layer-grouped residual branch"
        if dense is not None:
            layout.dense.append({"layer": cs.root, "reason": dense})
            log.info("groups: channels of '%s' stay dense (%s)", cs.root, dense)
            continue
        mixed = {n: k for n, k in layer_kinds.items() if k not in REMOVABLE_KINDS}
        if mixed:
            raise ConfigError(f"coupled channels of '{cs.root}' mix removable and mask rules ({mixed}); coupled layers "
                              "need channel/channel_block rules (or none) on every member")
        atoms = _atoms(cs)
        resolved = _resolve_block(cs, rules, len(atoms), allow_remainder)
        if resolved is None:
            layout.dense.append({"layer": cs.root, "reason": "fallback none"})
            continue
        block, kind, note = resolved
        chunks = [sorted(c for a in atoms[i:i + block] for c in a) for i in range(0, len(atoms), block)]
        first = layout.reserve(len(chunks))
        rgid = torch.empty(cs.width, dtype=torch.long)
        for j, chunk in enumerate(chunks):
            rgid[chunk] = first + j
        _fill_segments(model, cs, rgid, cmaps, layout)
        macs = torch.zeros(cs.width, dtype=torch.float64)
        for m, per in [(m, macs_per_out_channel) for m in cs.producers] + [(m, macs_per_in_column)
                                                                          for m in cs.consumers]:
            if conv_or_linear(m.module):
                cost = per(m.module, int(spatial.get(m.name, 1)))
                macs.index_add_(0, torch.tensor(m.root_idxs, dtype=torch.long),
                                torch.full((len(m.root_idxs),), cost, dtype=torch.float64))
        sizes = torch.tensor([len(c) for c in chunks], dtype=torch.float64)
        root, to_member = _pick_root(cs, order)
        layout.entries.append(Entry(
            name=root, kind=kind, granularity=kind if kind == "channel" else f"channel_block({block})",
            modules=tuple(sorted({m.name for m in cs.producers}, key=order.__getitem__)), removable=True, first=first,
            count=len(chunks), channels=[tuple(sorted(to_member[c] for c in ch)) for ch in chunks],
            consumers=tuple(sorted({m.name for m in cs.consumers}, key=order.__getitem__)),
            macs=torch.stack([macs[c].sum() for c in chunks]), rel_size=sizes / sizes.max(), note=note))


def _pick_root(cs: _CoupledSet, order: Mapping[str, int]) -> tuple[str, dict[int, int]]:
    """Name the set after its first non-depthwise conv/linear producer mapping one-to-one onto its channels.

    Producers are taken in module order. Returns (name, root channel -> that producer's channel).
    """
    def rank(m: _Member) -> tuple[int, int]:
        dw = isinstance(m.module, nn.modules.conv._ConvNd) and m.module.groups == m.module.out_channels > 1
        return (int(dw), order.get(m.name, 0))

    for m in sorted((m for m in cs.producers if conv_or_linear(m.module)), key=rank):
        if sorted(m.root_idxs) == list(range(cs.width)) and len(set(m.idxs)) == cs.width:
            return m.name, dict(zip(m.root_idxs, m.idxs, strict=False))
    return cs.root, {i: i for i in range(cs.width)}


def _fill_segments(model: nn.Module, cs: _CoupledSet, rgid: torch.Tensor, cmaps: dict[str, Segment],
                   layout: Layout) -> None:
    for m in cs.producers:
        for pname, p in m.module.named_parameters(recurse=False):
            dim = _param_dim(m.name, m.module, pname, p, cs.root)
            if dim is None:
                continue
            full = f"{m.name}.{pname}" if m.name else pname
            seg = cmaps.get(full)
            if seg is None:
                view, red = channel_view(p.shape, dim)
                gid_shape = tuple(1 if d in red else s for d, s in enumerate(view))
                seg = Segment(full, view, red, torch.full(gid_shape, -1, dtype=torch.long))
                layout.add_segment(seg)
                cmaps[full] = seg
            flat = seg.gid.view(-1)
            idx = torch.tensor(m.idxs, dtype=torch.long)
            if bool((flat[idx] >= 0).any()):
                raise AssertionError(f"channels of {full} would belong to two groups (overlap via '{cs.root}')")
            flat[idx] = rgid[torch.tensor(m.root_idxs, dtype=torch.long)]
