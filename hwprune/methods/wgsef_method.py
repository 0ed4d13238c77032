"""The default method: prox-SGD on loss + lam * WGSEF with half-space zeroing (METHOD.md section 6)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hwprune.groups import GroupSet
from hwprune.methods.base import MethodConfig, SparseMethod, SparsePhase, register_method
from hwprune.optim import ProxSGD

__all__ = ["WgsefMethod", "GroupCountLogger"]


class GroupCountLogger:
    """Epoch callback: nonzero groups per scope, frozen groups and the penalty value."""

    def __init__(self, groupset: GroupSet, optimizer: Any | None = None) -> None:
        self.groupset = groupset
        self.optimizer = optimizer

    def on_step_end(self, step: int, epoch: int) -> None:  # noqa: D102
        return None

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        nz = self.groupset.nonzero_per_scope()
        out: dict[str, Any] = {"nonzero_groups": int(nz.sum()), "nonzero_per_scope": nz.tolist()}
        if isinstance(self.optimizer, ProxSGD):
            out["penalty"] = float(self.optimizer.penalty())
            out["frozen_groups"] = int(self.optimizer.frozen.sum())
        return out


@register_method
class WgsefMethod(SparseMethod):
    """WGSEF prox-SGD: exact value/prox per scope, half-space zeroing + freezing after ``hs_frac``."""

    name = "wgsef"
    summary = "prox-SGD on loss + lam*WGSEF (exactly k groups per scope; default)"
    # Measured on digits_cnn/digits, 10 sparse epochs (~230 steps, lr 0.05): lam <= 1 left 17-20 of 20
    # groups nonzero before the final projection, lam = 3 left 12 (k = 10). The prox step is lr * lam.
    default_lam = 2.0

    def prepare(
        self, model: nn.Module, groupset: GroupSet, k: torch.Tensor, cfg: MethodConfig, *, total_steps: int
    ) -> SparsePhase:  # noqa: D102
        opt = ProxSGD(
            model,
            groupset,
            k,
            lr=cfg.lr,
            lam=cfg.lam,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            eps=cfg.eps,
            hs_start=int(round(cfg.hs_frac * total_steps)),
        )
        return SparsePhase(optimizer=opt, callbacks=[GroupCountLogger(groupset, opt)])
