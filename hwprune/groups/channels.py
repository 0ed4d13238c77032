"""Structured channel groups from Torch-Pruning's dependency graph (internal to ``hwprune.groups.build``).

For every coupled set of output channels (rooted at convs and Linear layers, read by
``coupling.analyse_set``) the rule is resolved from the producers of the set:

* a ``none`` rule on any producer module (conv, linear, norm, ...) keeps the whole set dense;
* the set is grouped only if a producer conv/linear has a ``channel`` or ``channel_block`` rule,
  or the set is the hidden width of a module matched by an ``mlp_block`` rule (produced and
  consumed inside it); producers without a rule are grouped with it (exact removal needs every
  producer slice). A producer with a mask rule (``kernel_shape``/``unstructured``) in the same set
  is a ConfigError: the elements would belong to two groups;
* different blocks combine to their least common multiple, so the kept width is a multiple of
  every requested block. A block that does not divide the width uses the rule's ``fallback``
  (``channel``, ``channel_block`` or ``none``), else ConfigError naming layer and width
  (``allow_remainder=True`` instead makes the last block smaller);
* which channels share a block: ``block_order="index"`` cuts consecutive channels (8j .. 8j+7);
  ``"norm"`` sorts the units by the norm of their producer slices first (descending, ties by
  index), so a block holds channels of similar magnitude. Only the kept *width* matters to the
  device (surgery compacts the survivors), so any 8 channels make a block; with sorted blocks,
  keeping the top-k blocks keeps the top 8k channels, and the zero channels of a masked model
  form whole blocks whatever partition trained it (METHOD-level notes: docs/recipe.md);
* the set stays dense, with the reason in ``GroupSet.dense`` and the log, when it is coupled to
  the model output, touches a ``layer``-grouped branch or parameters of ``head`` groups, passes an
  opaque reshape/split (channel shuffle, head split; see ``graph``), is normalised across its
  channels (LayerNorm/GroupNorm: zeroing a channel is not removing it -- the residual stream of a
  transformer), has MultiheadAttention's ``embed_dim``, a module hwprune cannot slice, or a bare
  parameter used other than by add/mul/cat. A rule that explicitly asks for such a norm's
  channels is a ConfigError.

Grouped convolutions (``1 < groups < out_channels``) are handled by orbits (``coupling.atoms``).
Bare parameters (layer scale, class token, position embedding) are producer slices, cut along the
axis Torch-Pruning slices them. Consumers' input columns are never grouped (the WGSEF needs a
partition; surgery removes them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups.coupling import CoupledSet, Member, analyse_set, atoms, param_axis
from hwprune.groups.graph import iter_channel_groups
from hwprune.groups.segments import (
    Claims,
    Entry,
    Layout,
    Segment,
    channel_view,
    macs_per_in_column,
    macs_per_out_channel,
)
from hwprune.profiles.schema import (
    ChannelBlockGranularity,
    ChannelGranularity,
    Granularity,
    KernelShapeGranularity,
    LayerRule,
    MLPBlockGranularity,
    NoGranularity,
    UnstructuredGranularity,
)

__all__ = ["add_channel_sets"]

log = logging.getLogger("hwprune.groups.groupset")

_CHANNEL_KINDS = (ChannelGranularity, ChannelBlockGranularity)
_MASK_KINDS = (KernelShapeGranularity, UnstructuredGranularity)
_STAT_NORMS = (nn.LayerNorm, nn.GroupNorm)


@dataclass
class _Request:
    """One block request on a coupled set: a producer layer's rule or an enclosing ``mlp_block`` rule."""

    owner: str
    rule: LayerRule
    granularity: Granularity


@dataclass
class _Ctx:
    model: nn.Module
    rules: Mapping[str, LayerRule | None]
    layout: Layout
    spatial: Mapping[str, int]
    claims: Claims
    allow_remainder: bool
    block_order: str = "index"
    order: dict[str, int] = field(default_factory=dict)
    containers: list[tuple[str, LayerRule]] = field(default_factory=list)
    segments: dict[str, Segment] = field(default_factory=dict)


def _block_of(g: Granularity) -> int:
    return g.block if isinstance(g, (ChannelBlockGranularity, MLPBlockGranularity)) else 1


def _inside(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix + ".")


def _container_request(ctx: _Ctx, cs: CoupledSet) -> _Request | None:
    """The innermost ``mlp_block`` rule whose module contains every conv/linear producer and consumer."""
    layers = [m.name for m in cs.producers + cs.consumers if m.is_layer]
    if not layers or not any(m.is_layer for m in cs.consumers):
        return None
    best: tuple[str, LayerRule] | None = None
    for prefix, rule in ctx.containers:
        if all(_inside(n, prefix) for n in layers) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, rule)
    return None if best is None else _Request(best[0], best[1], best[1].granularity)


def _requests(ctx: _Ctx, cs: CoupledSet) -> list[_Request]:
    out = [_Request(m.name, r, r.granularity) for m in cs.producers
           if m.is_layer and (r := ctx.rules.get(m.name)) is not None
           and isinstance(r.granularity, _CHANNEL_KINDS)]
    container = _container_request(ctx, cs)
    return out + ([container] if container is not None else [])


def _dense_reason(ctx: _Ctx, cs: CoupledSet) -> str | None:
    """Why this coupled set stays dense (checked in order), or None to group it."""
    rules = {m.name: r for m in cs.producers if m.param is None and (r := ctx.rules.get(m.name)) is not None}
    nones = [n for n, r in rules.items() if isinstance(r.granularity, NoGranularity)]
    if nones:
        return "a producer has rule none: " + ", ".join(nones)
    for m in cs.producers:
        r = rules.get(m.name)
        if isinstance(m.module, _STAT_NORMS) and r is not None and isinstance(r.granularity, _CHANNEL_KINDS):
            raise ConfigError(f"rule {r.match!r} asks to prune the channels of '{m.name}' ({type(m.module).__name__}), "
                              f"which normalises across them (set rooted at '{cs.root}'): a zeroed channel still "
                              "changes its statistics, so removal would not be exact; drop the rule for this layer")
    if cs.output_coupled:
        return "coupled to the model output"
    if any(m.name in ctx.claims.modules for m in cs.producers):
        return "touches a layer-grouped residual branch"
    if cs.blockers:
        return cs.blockers[0] + (f" (+{len(cs.blockers) - 1} more)" if len(cs.blockers) > 1 else "")
    heads = [m.name for m in cs.producers if any(p in ctx.claims.params for p in _param_names(m))]
    if heads:
        return "parameters belong to head groups: " + ", ".join(heads[:3]) + (" ..." if len(heads) > 3 else "")
    mixed = {m.name: r.granularity.kind for m in cs.producers if m.is_layer
             and (r := rules.get(m.name)) is not None and isinstance(r.granularity, _MASK_KINDS)}
    if mixed:
        raise ConfigError(f"coupled channels of '{cs.root}' mix removable and mask rules ({mixed}); coupled layers "
                          "need channel/channel_block rules (or none) on every member")
    return None


def _param_names(m: Member) -> list[str]:
    if m.param is not None:
        return [m.name]
    return [f"{m.name}.{p}" if m.name else p for p, _ in m.module.named_parameters(recurse=False)]


def _fit(req: _Request, cs: CoupledSet, n_atoms: int, allow_remainder: bool) -> Granularity | None:
    """The granularity this request applies (its fallback if the block does not fit); None = 'none'."""
    g = req.granularity
    if n_atoms % _block_of(g) == 0 or allow_remainder:
        return g
    fb = req.rule.fallback
    units = f"{cs.width} coupled output channels" + (f" ({n_atoms} units over conv groups)"
                                                     if n_atoms != cs.width else "")
    if fb is None:
        raise ConfigError(f"layer '{req.owner}': {units} (set rooted at '{cs.root}') are not divisible by "
                          f"{g.kind} {_block_of(g)} of rule {req.rule.match!r}; add a fallback or use a divisor "
                          "of the width")
    if isinstance(fb, NoGranularity):
        return None
    if not isinstance(fb, _CHANNEL_KINDS) or n_atoms % _block_of(fb):
        raise ConfigError(f"layer '{req.owner}': fallback '{fb.kind}' of rule {req.rule.match!r} cannot group "
                          f"{units}; use channel, a dividing channel_block, or none")
    return fb


def _resolve(cs: CoupledSet, requests: Sequence[_Request], n_atoms: int,
             allow_remainder: bool) -> tuple[int, str, str, str] | None:
    """(block, kind, granularity label, note) for the set, or None when a fallback says ``none``."""
    blocks: list[int] = []
    kind, label = "channel", ""
    notes: list[str] = []
    for req in requests:
        g = _fit(req, cs, n_atoms, allow_remainder)
        if g is None:
            return None
        if g is not req.granularity:
            notes.append(f"fallback {g.kind}" + (f"({_block_of(g)})" if _block_of(g) > 1 else "")
                         + f" for {req.owner}")
        if isinstance(g, (ChannelBlockGranularity, MLPBlockGranularity)):
            kind = "channel_block"
        if isinstance(g, MLPBlockGranularity):
            label = f"mlp_block({g.block})"
            notes.append(f"hidden width of '{req.owner}'")
        blocks.append(_block_of(g))
    block = math.lcm(*blocks) if blocks else 1
    if n_atoms % block:
        notes.append(f"remainder block of {n_atoms % block}")
    if not label:
        label = kind if kind == "channel" else f"channel_block({block})"
    return block, kind, label, "; ".join(notes)


def add_channel_sets(model: nn.Module, dg: Any, rules: Mapping[str, LayerRule | None], layout: Layout,
                     spatial: Mapping[str, int], claims: Claims, *, allow_remainder: bool = False,
                     block_order: str = "index") -> None:
    """Append one removable entry per grouped coupled set of ``dg`` to ``layout`` (see module docstring).

    Args:
        model: the network ``dg`` was traced from (``hwprune.groups.graph.build_graph``).
        dg: its checked torch-pruning dependency graph.
        rules: module name -> first matching structured rule (or None).
        layout: receives segments, entries and dense reasons.
        spatial: output positions per sample of every conv/linear (for MACs).
        claims: module names inside ``layer`` branches and parameters of ``head`` groups (sets touching
            them stay dense).
        allow_remainder: make the last channel block smaller instead of using the fallback/erroring.
        block_order: ``"index"`` (consecutive channels per block) or ``"norm"`` (channels sorted by
            the norm of their producer slices before they are cut into blocks).
    """
    names = {m: n for n, m in model.named_modules()}
    ctx = _Ctx(model, rules, layout, spatial, claims, allow_remainder, block_order,
               order={n: i for i, n in enumerate(names.values())},
               containers=[(n, r) for n, r in rules.items()
                           if r is not None and isinstance(r.granularity, MLPBlockGranularity)])
    sets: list[CoupledSet] = []
    for root, group, error in iter_channel_groups(dg):
        if group is None:
            layout.dense.append({"layer": names[root], "reason": str(error)})
            log.info("groups: channels of '%s' stay dense (%s)", names[root], error)
            continue
        sets.append(analyse_set(dg, root, group, names))
    sets.sort(key=lambda c: min((ctx.order.get(m.name, 0) for m in c.producers), default=0))  # ids in model order
    for cs in sets:
        requests = _requests(ctx, cs)
        if not requests:
            continue
        units, reason = atoms(cs)
        reason = _dense_reason(ctx, cs) or reason
        if reason is not None:
            layout.dense.append({"layer": cs.root, "reason": reason})
            log.info("groups: channels of '%s' stay dense (%s)", cs.root, reason)
            continue
        resolved = _resolve(cs, requests, len(units), allow_remainder)
        if resolved is None:
            layout.dense.append({"layer": cs.root, "reason": "fallback none"})
            continue
        _add_entry(ctx, cs, units, *resolved)


def _unit_scores(cs: CoupledSet, units: list[list[int]]) -> list[float]:
    """Squared norm (float64) of every unit's producer slices: the group norm each unit adds."""
    per_root = torch.zeros(cs.width, dtype=torch.float64)
    for m in cs.producers:
        params = [(m.param, m.param_dim)] if m.param is not None else [
            (p, param_axis(m.module, pn, p.dim(), p.numel())) for pn, p in m.module.named_parameters(recurse=False)]
        for p, dim in params:
            if dim is None:
                continue
            view, red = channel_view(p.shape, dim)
            sq = p.detach().to(torch.float64).reshape(view).square().sum(dim=red)
            per_root.index_add_(0, torch.tensor(m.root_idxs, dtype=torch.long), sq[torch.tensor(m.idxs)])
    return [float(per_root[u].sum()) for u in units]


def _ordered_units(ctx: _Ctx, cs: CoupledSet, units: list[list[int]], block: int) -> list[list[int]]:
    """``units`` in the order they are cut into blocks (``ctx.block_order``; single units: unchanged)."""
    if ctx.block_order == "index" or block == 1:
        return units
    scores = _unit_scores(cs, units)
    return [units[i] for i in sorted(range(len(units)), key=lambda i: (-scores[i], i))]


def _add_entry(ctx: _Ctx, cs: CoupledSet, units: list[list[int]], block: int, kind: str, label: str,
               note: str) -> None:
    units = _ordered_units(ctx, cs, units, block)
    chunks = [sorted(c for a in units[i:i + block] for c in a) for i in range(0, len(units), block)]
    first = ctx.layout.reserve(len(chunks))
    rgid = torch.empty(cs.width, dtype=torch.long)
    for j, chunk in enumerate(chunks):
        rgid[chunk] = first + j
    for m in cs.producers:
        _fill_segments(ctx, cs, m, rgid)
    macs = torch.zeros(cs.width, dtype=torch.float64)
    for m, per in [(m, macs_per_out_channel) for m in cs.producers] + [(m, macs_per_in_column)
                                                                      for m in cs.consumers]:
        if m.is_layer:
            cost = per(m.module, int(ctx.spatial.get(m.name, 1)))
            macs.index_add_(0, torch.tensor(m.root_idxs, dtype=torch.long),
                            torch.full((len(m.root_idxs),), cost, dtype=torch.float64))
    sizes = torch.tensor([len(c) for c in chunks], dtype=torch.float64)
    root, to_member = _pick_root(cs, ctx.order)
    order = ctx.order.get
    ctx.layout.entries.append(Entry(
        name=root, kind=kind, granularity=label,
        modules=tuple(sorted({m.name for m in cs.producers if m.param is None}, key=lambda n: order(n, 0))),
        removable=True, first=first, count=len(chunks),
        channels=[tuple(sorted(to_member[c] for c in ch)) for ch in chunks],
        consumers=tuple(sorted({m.name for m in cs.consumers if m.param is None}, key=lambda n: order(n, 0))),
        macs=torch.stack([macs[c].sum() for c in chunks]), rel_size=sizes / sizes.max(), note=note))


def _pick_root(cs: CoupledSet, order: Mapping[str, int]) -> tuple[str, dict[int, int]]:
    """Name the set after its first non-depthwise conv/linear producer mapping one-to-one onto its channels.

    Producers are taken in module order. Returns (name, root channel -> that producer's channel).
    """
    def rank(m: Member) -> tuple[int, int]:
        dw = isinstance(m.module, nn.modules.conv._ConvNd) and m.module.groups == m.module.out_channels > 1
        return (int(dw), order.get(m.name, 0))

    for m in sorted((m for m in cs.producers if m.is_layer), key=rank):
        if sorted(m.root_idxs) == list(range(cs.width)) and len(set(m.idxs)) == cs.width:
            return m.name, dict(zip(m.root_idxs, m.idxs, strict=False))
    return cs.root, {i: i for i in range(cs.width)}


def _fill_segments(ctx: _Ctx, cs: CoupledSet, m: Member, rgid: torch.Tensor) -> None:
    """Write the group ids of producer ``m``'s slices into its parameters' segments."""
    params: list[tuple[str, torch.Tensor, int | None]]
    if m.param is not None:
        params = [(m.name, m.param, m.param_dim)]
    else:
        params = [(f"{m.name}.{pn}" if m.name else pn, p, param_axis(m.module, pn, p.dim(), p.numel()))
                  for pn, p in m.module.named_parameters(recurse=False)]
    idx = torch.tensor(m.idxs, dtype=torch.long)
    gids = rgid[torch.tensor(m.root_idxs, dtype=torch.long)]
    for full, p, dim in params:
        if dim is None:
            continue
        seg = ctx.segments.get(full)
        if seg is None:
            view, red = channel_view(p.shape, dim)
            gid_shape = tuple(1 if d in red else s for d, s in enumerate(view))
            seg = Segment(full, view, red, torch.full(gid_shape, -1, dtype=torch.long))
            ctx.layout.add_segment(seg)
            ctx.segments[full] = seg
        flat = seg.gid.view(-1)
        if bool((flat[idx] >= 0).any()):
            raise AssertionError(f"channels of {full} would belong to two groups (overlap via '{cs.root}')")
        flat[idx] = gids
