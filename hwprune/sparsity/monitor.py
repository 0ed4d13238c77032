"""``GroupCountLogger``: the per-epoch sparsity record every sparse phase and fine-tune logs.

Merged into each epoch record of ``hwprune.training.loop.fit``: ``nonzero_groups`` (total),
``nonzero_per_scope`` (list, one per scope) and, when the optimiser reports them, ``penalty`` (its
``penalty()``: the regulariser value, e.g. ``lam * WGSEF`` or the group-lasso sum) and
``frozen_groups`` (its ``frozen`` mask: groups held at zero).

``ZeroCauseTracker`` attributes every group a sparse phase zeroes to the step that did it (the
method's prox or the half-space step) and adds ``k_groups`` (the budget) and ``zero_causes`` to
the epoch record.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from hwprune.groups.groupset import GroupSet

__all__ = ["GroupCountLogger", "PenaltyReporter", "ZeroCauseTracker", "CAUSES"]


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


CAUSES: tuple[str, ...] = ("dead", "prox", "halfspace", "untracked")  # ZeroCauseTracker's labels


class ZeroCauseTracker:
    """Step callback of a sparse phase: which step zeroed each group (the report's "who chose the groups").

    After every optimiser step a group that just became exactly zero is attributed to the
    half-space step when the optimiser froze it in that step (``ProxSGD.frozen``), else to the
    method's proximal step (``prox``: the WGSEF or group-lasso prox, SSR's update); a group that
    comes back to life loses its attribution. ``dead``: zero when tracking started.
    ``untracked``: zero when tracking started late (a resumed phase whose checkpoint holds no attribution).
    The attribution is checkpointed with the phase (``state_dict``), so a resumed phase keeps it.

    Args:
        groupset: the groups watched.
        optimizer: the phase's optimiser (its ``frozen`` (G,) bool mask is read when present).
        k: (S,) budget; its sum is logged as ``k_groups`` (None: not logged).
        start_now: take the initial state now (a fresh phase); False: at the first step (resumed
            phases load their checkpoint after the callback is built).
    """

    def __init__(self, groupset: GroupSet, optimizer: object | None = None, *, k: torch.Tensor | None = None,
                 start_now: bool = True) -> None:
        self.groupset = groupset
        self.optimizer = optimizer
        self.k_total = None if k is None else int(torch.as_tensor(k).sum())
        self.cause = torch.zeros(groupset.num_groups, dtype=torch.long)  # index into CAUSES + 1; 0 = alive
        self._zero: torch.Tensor | None = None
        self._frozen: torch.Tensor | None = None
        if start_now:
            self._start(CAUSES.index("dead"))

    def _frozen_mask(self) -> torch.Tensor:
        frozen = getattr(self.optimizer, "frozen", None)
        if isinstance(frozen, torch.Tensor) and frozen.shape == (self.groupset.num_groups,):
            return frozen.clone()
        return torch.zeros(self.groupset.num_groups, dtype=torch.bool)

    def _start(self, label: int) -> None:
        self._zero = ~self.groupset.nonzero()
        self._frozen = self._frozen_mask()
        self.cause = torch.where(self._zero, torch.full_like(self.cause, label + 1), torch.zeros_like(self.cause))

    def on_step_end(self, step: int, epoch: int) -> None:
        """Attribute the groups that became zero in this step (``fit`` callback)."""
        if self._zero is None or self._frozen is None:
            self._start(CAUSES.index("untracked"))
            return
        zero = ~self.groupset.nonzero()
        frozen = self._frozen_mask()
        new = zero & ~self._zero
        if bool(new.any()):
            by_halfspace = new & frozen & ~self._frozen
            self.cause[new] = CAUSES.index("prox") + 1
            self.cause[by_halfspace] = CAUSES.index("halfspace") + 1
        self.cause[~zero] = 0
        self._zero, self._frozen = zero, frozen

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        """``k_groups`` (the budget) and ``zero_causes`` (cause -> groups zero now) for the epoch record."""
        out: dict[str, Any] = {"zero_causes": {c: sum(v) for c, v in self.per_scope().items() if sum(v)}}
        if self.k_total is not None:
            out["k_groups"] = self.k_total
        return out

    def state_dict(self) -> dict[str, Any]:
        """The attribution so far (stored in the phase's checkpoint; a resumed phase keeps it)."""
        if self._zero is None or self._frozen is None:
            return {}
        return {"cause": self.cause.clone(), "zero": self._zero.clone(), "frozen": self._frozen.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (an empty or mismatched state is ignored: groups become ``untracked``)."""
        if not state or torch.as_tensor(state["cause"]).shape != self.cause.shape:
            return
        self.cause = torch.as_tensor(state["cause"], dtype=torch.long).clone()
        self._zero = torch.as_tensor(state["zero"], dtype=torch.bool).clone()
        self._frozen = torch.as_tensor(state["frozen"], dtype=torch.bool).clone()

    def per_scope(self) -> dict[str, list[int]]:
        """Cause -> (S,) list: groups of each scope currently zero by that cause (``untracked`` if no step was seen)."""
        if self._zero is None:
            self._start(CAUSES.index("untracked"))
        gs = self.groupset
        out = {}
        for i, name in enumerate(CAUSES):
            hit = (self.cause == i + 1).to(torch.long)
            out[name] = torch.zeros(gs.num_scopes, dtype=torch.long).index_add_(0, gs.scope_index, hit).tolist()
        return out
