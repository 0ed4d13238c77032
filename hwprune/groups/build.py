"""Profile granularities -> ``GroupSet``: coupled, disjoint parameter groups acting in place.

``build_groups(model, profile, example_inputs, phase)`` resolves the profile's rules (first match
wins within the phase) and cuts the model's parameters into groups:

* structured phase: ``channel`` / ``channel_block`` groups over every producer-side slice of a
  coupled channel set (conv/linear output rows and biases, norm gamma/beta, following depthwise
  filters, residual-add partners; Torch-Pruning dependency graph, see ``_group_layout``), ``layer``
  groups (whole residual branches), and the masks ``kernel_shape`` and ``unstructured``
  (``_group_masks``). Consumers' input columns are never grouped (METHOD.md 7.1): removing a
  group later (surgery) removes them as dependent slices.
* nm phase: singleton groups, one scope per block of M consecutive inputs (k = N).

Every parameter element is in at most one group (checked on construction); parameters without
groups are listed in ``GroupSet.ungrouped``. All reductions are one vectorised pass per parameter
(float64 accumulation, see ``_group_ops``); nothing loops over groups in Python.

Weights ``d_i`` (``profile.weight_mode``): ``uniform`` 1; ``size`` elements of the group; ``flops``
MACs per sample removed with the group (producer MACs of its output channels plus consumers' MACs
on those inputs, from output shapes recorded on ``example_inputs``); ``latency`` the per-group cost
``latency_table[layer]`` (a number, or one value per group of that layer). Weights are normalised
to mean 1 within each scope; nm groups always have ``d = 1``.

Scopes: ``per_layer`` = one scope per coupled set (removable kinds) or per layer (masks);
``global`` = one scope ``"global"`` for all structured groups; ``layer`` groups always share the
scope ``"layers"``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from torch import nn

from hwprune.base.checks import BLOCK_ORDERS
from hwprune.base.errors import ConfigError
from hwprune.groups.channels import add_channel_sets
from hwprune.groups.graph import build_graph
from hwprune.groups.groupset import PHASES, GroupSet
from hwprune.groups.heads import add_head_groups
from hwprune.groups.masks import add_layer_groups, add_mask_groups, add_nm_groups, resolve_rules
from hwprune.groups.segments import Claims, Layout, record_spatial
from hwprune.profiles.schema import HardwareProfile

__all__ = ["build_groups"]

log = logging.getLogger(__name__)


def build_groups(model: nn.Module, profile: HardwareProfile, example_inputs: Any,
                 phase: Literal["structured", "nm"] = "structured", *,
                 latency_table: Mapping[str, Any] | None = None, allow_remainder: bool = False,
                 block_order: str = "index") -> GroupSet:
    """Cut ``model``'s parameters into the groups ``profile`` asks for in ``phase``.

    Args:
        model: the network; its parameters are referenced, not copied (training flags are preserved).
        profile: hardware profile; rules are matched first-match-wins within ``phase``.
        example_inputs: a (N, C, H, W) tensor (or args tuple / kwargs dict) for tracing and MACs.
        phase: ``"structured"`` (channel, channel_block, kernel_shape, layer, unstructured) or ``"nm"``.
        latency_table: layer name -> per-group cost (``weight_mode="latency"`` only).
        allow_remainder: make the last channel block smaller instead of using the fallback/erroring.
        block_order: which channels share a channel block: ``"index"`` consecutive ones, ``"norm"``
            the channels sorted by the norm of their producer slices (what a trained model is
            pruned with; see ``hwprune.groups.channels``).

    Raises:
        ConfigError: unknown phase or block order, a non-optional rule matching nothing, a block not dividing a
            width without fallback, a ``layer`` rule on a non-block module, a missing latency entry.
    """
    if phase not in PHASES:
        raise ConfigError(f"unknown phase {phase!r}; valid: {', '.join(PHASES)}")
    if block_order not in BLOCK_ORDERS:
        raise ConfigError(f"unknown block order {block_order!r}; valid: {', '.join(BLOCK_ORDERS)}")
    rules = resolve_rules(model, profile, phase)
    spatial = record_spatial(model, example_inputs)
    layout = Layout()
    if phase == "structured":
        claims = Claims()
        add_layer_groups(model, rules, layout, spatial, claims)
        add_head_groups(model, rules, layout, spatial, claims)
        add_channel_sets(model, build_graph(model, example_inputs), rules, layout, spatial, claims,
                         allow_remainder=allow_remainder, block_order=block_order)
        add_mask_groups(model, rules, layout, spatial, claims.modules)
    else:
        add_nm_groups(model, rules, layout)
    gs = GroupSet(model, layout, phase=phase, scope_mode=profile.scope, weight_mode=profile.weight_mode,
                  latency_table=latency_table)
    if gs.num_groups and bool((gs.scope_sizes < 1).any()):
        raise AssertionError("empty scope in GroupSet")
    log.info("groups: %d groups in %d scopes (%s phase), %d parameters ungrouped", gs.num_groups, gs.num_scopes,
             phase, len(gs.ungrouped))
    return gs

