"""Random baseline: keep k groups per scope drawn uniformly at random (seeded), no sparse phase.

The sanity check of every selection rule ("Rethinking the Value of Network Pruning", Liu et al.
2019; "Revisiting Random Channel Pruning", Li et al. 2022): if a learned or magnitude selection does
not beat a random one at equal widths and epochs, the selection is not what decides the accuracy
there. Like ``magnitude`` it is one-shot (``trains = False``): the runner gives its sparse-phase
epochs to the fine-tune, so every method gets the same optimiser steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups.groupset import GroupSet
from hwprune.sparsity.methods.base import MethodConfig, MethodOptions, SparseMethod, SparsePhase, register_method
from hwprune.sparsity.selection import keep_top_k_

__all__ = ["RandomMethod", "RandomOptions"]


@dataclass(frozen=True)
class RandomOptions(MethodOptions):
    """Options of ``random``. ``seed``: seed of the draw (the job's training seed does not change it)."""

    seed: int = 0


@register_method
class RandomMethod(SparseMethod):
    """Random selection of whole groups (one shot, then masked fine-tuning)."""

    name = "random"
    summary = "baseline: keep k groups per scope drawn at random (method_options: seed), no sparse phase"
    trains = False
    options_type = RandomOptions

    def __init__(self) -> None:
        self.options = RandomOptions()

    def parse_options(self, values: Any) -> MethodOptions:
        """Parse and remember the options (``finalize`` gets no config)."""
        self.options = RandomOptions.from_mapping(values, method=self.name)
        return self.options

    def prepare(
        self, model: nn.Module, groupset: GroupSet, k: torch.Tensor, cfg: MethodConfig, *, total_steps: int
    ) -> SparsePhase:
        """Not used: random has no sparse phase (``trains = False``)."""
        raise ConfigError("method 'random' has no sparse phase; the runner calls finalize directly")

    def finalize(self, model: nn.Module, groupset: GroupSet, k: torch.Tensor,
                 phase: SparsePhase | None) -> dict[str, Any]:
        """Zero all but ``k`` random nonzero groups per scope; returns how many were zeroed and the seed."""
        gen = torch.Generator().manual_seed(self.options.seed)
        score = torch.rand(groupset.num_groups, generator=gen, dtype=torch.float64)
        drop = keep_top_k_(groupset, k, score, groupset.norms() > 0)
        return {"zeroed": int(drop.sum()), "seed": self.options.seed}
