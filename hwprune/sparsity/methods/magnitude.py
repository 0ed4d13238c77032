"""One-shot magnitude baseline: keep the top-k groups per scope of the dense model, no sparse phase.

Selection is by ``||W_g|| / sqrt(d_g)`` (``hwprune.sparsity.selection.project_to_k_``; the plain group L2 norm
under ``weight_mode: uniform``), the same rule the runner uses to trim every method to ``k``. The
runner then fine-tunes with the mask fixed. For an equal-budget comparison the runner should give
this method's sparse-phase epochs to fine-tuning (``trains = False``): total epochs then match the
trained methods'.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups.groupset import GroupSet
from hwprune.sparsity.methods.base import MethodConfig, SparseMethod, SparsePhase, register_method
from hwprune.sparsity.selection import project_to_k_

__all__ = ["MagnitudeMethod"]


@register_method
class MagnitudeMethod(SparseMethod):
    """Magnitude pruning of whole groups (one shot, then masked fine-tuning)."""

    name = "magnitude"
    summary = "one-shot: keep the top-k groups per scope by ||W_g||/sqrt(d_g) of the dense model"
    trains = False

    def prepare(
        self, model: nn.Module, groupset: GroupSet, k: torch.Tensor, cfg: MethodConfig, *, total_steps: int
    ) -> SparsePhase:
        """Not used: magnitude has no sparse training phase (``trains = False``)."""
        raise ConfigError("method 'magnitude' has no sparse phase; the runner calls finalize directly")

    def finalize(self, model: nn.Module, groupset: GroupSet, k: torch.Tensor,
                 phase: SparsePhase | None) -> dict[str, Any]:
        """Zero all but the top-``k`` groups per scope; returns how many were zeroed."""
        dropped = project_to_k_(groupset, k)
        return {"zeroed": int(dropped.sum())}
