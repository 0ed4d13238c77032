"""Which groups survive: the per-scope budget ``k`` and the keep-top-k rule every one-shot selection uses.

``project_to_k_`` is the lam -> inf limit of the WGSEF prox (keep the top-k groups per scope by
``||x_G|| / sqrt(d_G)``); ``keep_top_k_`` is the same rule for any score (the ``random`` baseline's).
In a scope spanning several layers each layer first keeps its best group (METHOD.md section 6.3).
"""

from __future__ import annotations

from typing import Any

import torch

from hwprune.base.checks import check_sparsity
from hwprune.groups.groupset import GroupSet
from hwprune.groups.topk import topk_mask

__all__ = ["project_to_k_", "keep_top_k_", "k_per_scope", "scope_report", "layer_ids", "best_per_layer"]


def k_per_scope(groupset: GroupSet, sparsity: float) -> torch.Tensor:
    """Budget per scope for a target group sparsity ``s``: ``k = ceil((1 - s) * m) >= 1``, shape (S,)."""
    return groupset.k_for_sparsity(check_sparsity(sparsity))


def layer_ids(groupset: GroupSet) -> torch.Tensor | None:
    """(G,) long id of each group's root layer, or None when no scope spans more than one layer."""
    if groupset.phase != "structured" or groupset.num_groups == 0:
        return None
    names = [g.root_module for g in groupset.groups]
    lookup: dict[str, int] = {}
    ids = torch.tensor([lookup.setdefault(n, len(lookup)) for n in names], dtype=torch.long)
    pairs = torch.unique(torch.stack([groupset.scope_index.to(torch.long), ids]), dim=1)
    return ids if pairs.shape[1] > groupset.num_scopes else None


def best_per_layer(layers: torch.Tensor, score: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """(G,) bool: the single highest-``score`` eligible group of every layer (ties: lowest index)."""
    masked = torch.where(eligible, score, torch.full_like(score, -torch.inf))
    n = int(layers.max()) + 1
    best = torch.full((n,), -torch.inf, dtype=score.dtype).scatter_reduce(0, layers, masked, reduce="amax")
    is_best = eligible & (masked == best[layers])
    first = torch.full((n,), layers.numel(), dtype=torch.long).scatter_reduce(
        0, layers, torch.where(is_best, torch.arange(layers.numel()), layers.numel()), reduce="amin")
    return is_best & (torch.arange(layers.numel()) == first[layers])


@torch.no_grad()
def project_to_k_(groupset: GroupSet, k: torch.Tensor) -> torch.Tensor:
    """Zero all but the top-``k`` groups per scope by ``||x_G|| / sqrt(d_G)`` (the lam -> inf selection).

    Zero groups never count as kept. In a scope spanning several layers (global scope) every layer first
    keeps its best nonzero group, so no layer is emptied (METHOD.md section 6.3's hazard of the global
    scope). Returns the (G,) bool mask of groups zeroed by this call.
    """
    norms = groupset.norms()
    return keep_top_k_(groupset, k, norms / groupset.weights.sqrt(), norms > 0)


@torch.no_grad()
def keep_top_k_(groupset: GroupSet, k: torch.Tensor, score: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Zero all ``alive`` groups but the top-``k`` per scope by ``score`` (G,) >= 0; returns the zeroed (G,) mask.

    Groups not ``alive`` (already zero) never count as kept. In a scope spanning several layers every
    layer first keeps its best alive group, so no layer is emptied. The rule of ``project_to_k_`` for
    any score (e.g. the ``random`` baseline's).
    """
    score = torch.where(alive, score, torch.full_like(score, -1.0))
    layers = layer_ids(groupset)
    if layers is not None:  # a scope spanning several layers keeps each layer's best group first
        floor = best_per_layer(layers, score, alive)
        score = torch.where(floor, score + 2.0 * (float(score.abs().max()) + 1.0), score)
    keep = topk_mask(groupset, k, score) & alive
    drop = (~keep) & alive
    if bool(drop.any()):
        groupset.zero_(torch.nonzero(drop).flatten())
    return drop


def scope_report(groupset: GroupSet, k: torch.Tensor) -> list[dict[str, Any]]:
    """Per scope ``{name, total, k, nonzero}`` (plain ints), the record every run stores."""
    nonzero = groupset.nonzero_per_scope()
    return [
        {"name": name, "total": int(total), "k": int(kk), "nonzero": int(nz)}
        for name, total, kk, nz in zip(
            groupset.scope_names, groupset.scope_sizes.tolist(), k.tolist(), nonzero.tolist(), strict=True
        )
    ]
