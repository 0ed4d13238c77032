"""``head`` groups: whole attention heads of modules matched by a head rule (internal to ``build``).

One removable group per head: the head's ``head_dim`` rows of the query, key and value projections
(weights and biases) and the matching ``head_dim`` input columns of the output projection (its
output rows are the residual stream, never grouped with them, so the groups stay a partition).
Layouts are those of ``hwprune.models.attention.attention_spec``: ``nn.MultiheadAttention``'s
packed ``in_proj_weight``, separate q/k/v ``Linear`` modules, or a packed ``qkv`` Linear.

A head rule on a module without such a layout, or inside a ``layer``-grouped branch, keeps that
module dense with the reason logged. One scope per attention module (``per_layer``).

MACs removed with one head (``weight_mode: flops``), per sample with ``T`` tokens, model width
``E`` and head width ``d``: ``3*d*E*T`` (q, k, v) + ``E*d*T`` (output) + ``2*d*T*T`` (scores and
weighted sum; self-attention).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from hwprune.groups.segments import Claims, Entry, Layout, Segment
from hwprune.models.attention import SPEC_HELP, attention_spec
from hwprune.profiles.schema import HeadGranularity, LayerRule

__all__ = ["add_head_groups"]

log = logging.getLogger("hwprune.groups.groupset")


def _inside(name: str, prefixes: set[str]) -> bool:
    return name in prefixes or any(name.startswith(p + ".") for p in prefixes)


def add_head_groups(model: nn.Module, rules: Mapping[str, LayerRule | None], layout: Layout,
                    tokens: Mapping[str, int], claims: Claims) -> None:
    """Append one removable entry per attention module with a ``head`` rule (see module docstring).

    Args:
        model: the network (parameters referenced, not copied).
        rules: module name -> first matching structured rule (or None).
        layout: receives segments, entries and dense reasons.
        tokens: tokens per sample seen by each attention module (``segments.record_spatial``).
        claims: ``claims.modules`` (inside layer branches) is read; the grouped parameter names are
            added to ``claims.params`` so channel sets touching them stay dense.
    """
    for name, module in model.named_modules():
        rule = rules.get(name)
        if rule is None or not isinstance(rule.granularity, HeadGranularity):
            continue
        if _inside(name, claims.modules):
            layout.dense.append({"layer": name, "reason": "inside a layer-grouped branch"})
            continue
        spec = attention_spec(module)
        if isinstance(spec, str):
            reason = f"head rule {rule.match!r}: {spec} (supported: {SPEC_HELP})"
            layout.dense.append({"layer": name, "reason": reason})
            log.info("groups: '%s' stays dense (%s)", name, reason)
            continue
        if spec.num_heads < 2:
            layout.dense.append({"layer": name, "reason": "a single head (surgery keeps one head)"})
            continue
        h, d = spec.num_heads, spec.head_dim
        first = layout.reserve(h)
        gid = (first + torch.arange(h, dtype=torch.long)).view(1, h, 1)
        for sl in spec.slices:
            full = f"{name}.{sl.param}" if name else sl.param
            layout.add_segment(Segment(full, sl.view, (0, 2), gid.clone()))
            claims.params.add(full)
        width = next(sl.view[0] for sl in spec.slices if sl.param.endswith(f"{spec.out}.weight"))
        t = float(tokens.get(name, 1))
        per_head = 3.0 * d * width * t + width * d * t + 2.0 * d * t * t
        layout.entries.append(Entry(
            name=name, kind="head", granularity=f"head({d})", modules=(name,), removable=True, first=first,
            count=h, channels=[(i,) for i in range(h)], macs=torch.full((h,), per_head, dtype=torch.float64),
            rel_size=torch.ones(h, dtype=torch.float64), note=f"{h} heads of {d}"))
