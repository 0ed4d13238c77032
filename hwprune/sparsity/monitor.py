"""``GroupCountLogger``: the per-epoch sparsity record every sparse phase and fine-tune logs.

Merged into each epoch record of ``hwprune.training.loop.fit``: ``nonzero_groups`` (total),
``nonzero_per_scope`` (list, one per scope) and, when the optimiser reports them, ``penalty`` (its
``penalty()``: the regulariser value, e.g. ``lam * WGSEF`` or the group-lasso sum) and
``frozen_groups`` (its ``frozen`` mask: groups held at zero).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from hwprune.groups.groupset import GroupSet

__all__ = ["GroupCountLogger", "PenaltyReporter"]


@runtime_checkable
class PenaltyReporter(Protocol):
    """An optimiser that can report its regulariser value (``ProxSGD``, ``GroupLassoSGD``)."""

    def penalty(self) -> torch.Tensor:
        """Current regulariser value (float64 scalar)."""
        ...


class GroupCountLogger:
    """Epoch callback: nonzero groups per scope, frozen groups and the optimiser's penalty value.

    Args:
        groupset: the groups counted (nonzero = group norm > 0).
        optimizer: optional; its ``penalty()`` and ``frozen`` (G,) bool mask are logged when present.
    """

    def __init__(self, groupset: GroupSet, optimizer: object | None = None) -> None:
        self.groupset = groupset
        self.optimizer = optimizer

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        """Nonzero groups (total and per scope), frozen groups and the penalty, merged into the epoch record."""
        nz = self.groupset.nonzero_per_scope()
        out: dict[str, Any] = {"nonzero_groups": int(nz.sum()), "nonzero_per_scope": nz.tolist()}
        if isinstance(self.optimizer, PenaltyReporter):
            out["penalty"] = float(self.optimizer.penalty())
        frozen = getattr(self.optimizer, "frozen", None)
        if isinstance(frozen, torch.Tensor):
            out["frozen_groups"] = int(frozen.sum())
        return out
