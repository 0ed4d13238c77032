"""``topk_mask``: keep the ``k[s]`` highest-scoring groups of every scope (the one top-k of hwprune).

Used by the top-k projection (``hwprune.sparsity.selection.project_to_k_``), SSR's selection by
``||F||`` and the measured profile selection. Ties are broken by group id (lower id kept first),
so the result never depends on sort stability or on the last bit of equal scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hwprune.groups.groupset import GroupSet

__all__ = ["topk_mask"]


def topk_mask(groupset: GroupSet, k: Tensor, score: Tensor) -> Tensor:
    """(G,) bool mask of the ``k[s]`` highest ``score`` groups of every scope ``s``.

    Args:
        groupset: the groups (scopes, padding layout).
        k: (S,) integer budget per scope; ``k[s] >= m_s`` keeps the whole scope, ``0`` keeps nothing.
        score: (G,) ranking key, any float dtype (compared in float64); ``-inf`` ranks last.

    Returns:
        (G,) bool, True for kept groups; ties keep the lower group id.
    """
    padded = groupset.to_padded(score.to(torch.float64), fill=-torch.inf)
    order = torch.argsort(padded, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(padded.shape[1]).expand_as(order).contiguous())
    keep = ranks < torch.as_tensor(k).to(torch.long).unsqueeze(1)
    return groupset.from_padded(keep.to(torch.float64)) > 0.5
