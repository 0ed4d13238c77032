"""The default method: prox-SGD on loss + lam * WGSEF with half-space zeroing (METHOD.md section 6).

Options (``method_options`` of the job, :class:`WgsefOptions`): ``eps`` (half-space threshold,
0.05) and ``hs_frac`` (fraction of the sparse phase before the half-space step starts, 0.3).
The default lambda (0.5) and its measurements are in ``benchmarks/results/`` (README, "What was measured").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups.groupset import GroupSet
from hwprune.sparsity.methods.base import MethodConfig, MethodOptions, SparseMethod, SparsePhase, register_method
from hwprune.sparsity.monitor import GroupCountLogger
from hwprune.sparsity.proxsgd import ProxOptions, ProxSGD

__all__ = ["WgsefMethod", "WgsefOptions", "halfspace_start"]


def halfspace_start(hs_frac: float, total_steps: int) -> int:
    """First optimiser step of the half-space phase: ``round(hs_frac * total_steps)``."""
    return int(round(hs_frac * total_steps))


@dataclass(frozen=True)
class WgsefOptions(MethodOptions):
    """Options of ``wgsef`` (and of the N:M phase's batched SEF prox).

    Attributes:
        eps: half-space threshold in [0, 1): a group with ``<theta~, theta> < eps ||theta||^2`` is zeroed.
        hs_frac: fraction of the phase's steps before the half-space step starts, in [0, 1].
    """

    eps: float = 0.05
    hs_frac: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < 1.0:
            raise ConfigError(f"eps must be in [0, 1), got {self.eps}")
        if not 0.0 <= self.hs_frac <= 1.0:
            raise ConfigError(f"hs_frac must be in [0, 1], got {self.hs_frac}")


@register_method
class WgsefMethod(SparseMethod):
    """WGSEF prox-SGD: exact value/prox per scope, half-space zeroing + freezing after ``hs_frac``."""

    name = "wgsef"
    summary = "prox-SGD on loss + lam*WGSEF (exactly k groups per scope; default)"
    default_lam = 0.5  # the prox step is lr * lam; chosen from the sweeps in benchmarks/results/
    options_type = WgsefOptions

    def prepare(
        self, model: nn.Module, groupset: GroupSet, k: torch.Tensor, cfg: MethodConfig, *, total_steps: int
    ) -> SparsePhase:
        """ProxSGD with the WGSEF prox, half-space zeroing from ``hs_frac`` of the phase."""
        opts = self.options_of(cfg, WgsefOptions)
        opt = ProxSGD(model, groupset, k, ProxOptions(
            lr=cfg.lr, lam=cfg.lam, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eps=opts.eps,
            hs_start=halfspace_start(opts.hs_frac, total_steps)))
        return SparsePhase(optimizer=opt, callbacks=[GroupCountLogger(groupset, opt)])
