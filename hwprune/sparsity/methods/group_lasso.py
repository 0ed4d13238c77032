"""Group-lasso baseline (SSL-style): prox-SGD on ``loss + lam * sum_g sqrt(d_g) ||W_g||_2``.

The groups are the GroupSet's (the same rows SSR and WGSEF act on). After every momentum-SGD step
the grouped tensors get the group soft threshold with the optimiser's *current* learning rate,
``W_g <- W_g * max(1 - lr * lam * sqrt(d_g) / ||W_g||, 0)`` (``hwprune.sparsity.ssr.row_prox_l21`` with
``rho = 1/lr``). No half-space step and no freezing: groups reach exact zero only through the prox.
The runner's top-k projection (by ``||W_g|| / sqrt(d_g)``) then meets the budget. ``d_g`` are the
GroupSet weights (1 under ``weight_mode: uniform``; ``size`` gives SSL's ``sqrt(|G|)`` weighting).
This is the "directly solves the group-sparsity regulariser" baseline of SSR.md 5.9.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups.groupset import GroupSet
from hwprune.sparsity.methods.base import MethodConfig, SparseMethod, SparsePhase, register_method
from hwprune.sparsity.monitor import GroupCountLogger
from hwprune.sparsity.ssr import row_prox_l21

__all__ = ["GroupLassoSGD", "GroupLassoMethod"]


class GroupLassoSGD(torch.optim.SGD):
    """Momentum SGD followed by the group soft threshold on the grouped parameters.

    Args:
        model: the module ``groupset`` was built on. groupset: the groups.
        lr: learning rate (the threshold uses the current lr of the grouped param group).
        lam: group-lasso strength (>= 0). momentum: SGD momentum.
        weight_decay: weight decay of ungrouped parameters (grouped tensors get none).
    """

    def __init__(self, model: nn.Module, groupset: GroupSet, *, lr: float, lam: float, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        if lam < 0 or lr < 0:
            raise ConfigError(f"group-lasso needs lr >= 0 and lam >= 0, got lr={lr}, lam={lam}")
        names = set(groupset.param_names)
        grouped = [p for n, p in model.named_parameters() if n in names]
        rest = [p for n, p in model.named_parameters() if n not in names and p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": grouped, "weight_decay": 0.0, "grouped": True}]
        if rest:
            groups.append({"params": rest, "weight_decay": weight_decay, "grouped": False})
        super().__init__(groups, lr=lr, momentum=momentum)
        self.groupset = groupset
        self.lam = float(lam)
        self._lam_g = self.lam * groupset.weights.sqrt()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """SGD step on the loss, then the group soft threshold ``lr * lam * sqrt(d_g)`` on every group."""
        loss = super().step(closure)
        lr = float(self.param_groups[0]["lr"])
        if lr > 0 and self.lam > 0:
            self.groupset.scale_(row_prox_l21(self.groupset.norms(), self._lam_g, 1.0 / lr))
        return loss

    def penalty(self) -> torch.Tensor:
        """Current ``lam * sum_g sqrt(d_g) ||W_g||`` (float64 scalar), for logging."""
        return (self._lam_g * self.groupset.norms()).sum()


@register_method
class GroupLassoMethod(SparseMethod):
    """Prox-SGD with group soft-thresholding (SSL-style); the runner's top-k meets the budget."""

    name = "group-lasso"  # no options (options_type: the empty MethodOptions)
    summary = "group-lasso prox-SGD (SSL-style, sqrt(d) weights) on the same groups; then top-k"

    def prepare(
        self, model: nn.Module, groupset: GroupSet, k: torch.Tensor, cfg: MethodConfig, *, total_steps: int
    ) -> SparsePhase:
        """Group-lasso prox-SGD over the groups (no half-space step; the runner's top-k finishes)."""
        opt = GroupLassoSGD(model, groupset, lr=cfg.lr, lam=cfg.lam, momentum=cfg.momentum,
                            weight_decay=cfg.weight_decay)
        return SparsePhase(optimizer=opt, callbacks=[GroupCountLogger(groupset, opt)])

    def finalize(self, model: nn.Module, groupset: GroupSet, k: torch.Tensor,
                 phase: SparsePhase | None) -> dict[str, Any]:
        """Report the groups the prox zeroed; selection of the rest is the runner's top-k."""
        nz = groupset.nonzero_per_scope()
        return {"nonzero_after_prox": nz.tolist(), "zeroed_by_prox": int((groupset.scope_sizes - nz).sum())}
