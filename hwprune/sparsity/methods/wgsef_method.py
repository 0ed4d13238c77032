"""The default method: prox-SGD on loss + lam * WGSEF with half-space zeroing (METHOD.md section 6).

Options (``method_options`` of the job, :class:`WgsefOptions`): ``schedule`` (continuation |
constant), ``prox_on`` (norm | group | weights, ``hwprune.sparsity.proxtarget``), ``ridge`` (cancel |
keep | renorm, ``hwprune.sparsity.proxstep``), ``tau0``, ``tau_end``, ``select_frac``, ``pace``
(``hwprune.sparsity.lamcontrol``), ``eps`` (half-space threshold) and ``hs_frac`` (start of the
half-space step under ``schedule: constant``). The measurements behind the defaults are in
``benchmarks/results/wgsef_diagnosis-*`` and docs/recipe.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups.groupset import GroupSet
from hwprune.sparsity.lamcontrol import LamContinuation
from hwprune.sparsity.methods.base import MethodConfig, MethodOptions, SparseMethod, SparsePhase, register_method
from hwprune.sparsity.monitor import GroupCountLogger
from hwprune.sparsity.proxsgd import ProxOptions, ProxSGD
from hwprune.sparsity.proxstep import RIDGE_MODES
from hwprune.sparsity.proxtarget import PROX_ON, build_prox_target

__all__ = ["WgsefMethod", "WgsefOptions", "SelectionDone", "halfspace_start"]

SCHEDULES = ("continuation", "constant")
PACES = ("geometric", "cubic")


def halfspace_start(hs_frac: float, total_steps: int) -> int:
    """First optimiser step of the half-space phase: ``round(hs_frac * total_steps)``."""
    return int(round(hs_frac * total_steps))


@dataclass(frozen=True)
class WgsefOptions(MethodOptions):
    """Options of ``wgsef`` (and of the N:M phase's batched SEF prox: ``eps``, ``hs_frac``).

    Attributes:
        schedule: ``continuation`` (default): the per-scope prox step grows geometrically from ``tau0``
            to ``tau_end`` over ``select_frac`` of the phase (and on, capped) until the prox and the
            half-space step (active from step 0) leave exactly k groups; the scope is then released
            (no prox on its survivors). ``constant``: the prox step is ``lr * lam`` throughout and the
            half-space step starts after ``hs_frac`` of the phase (hwprune's method before issue 11).
        prox_on: which slices the prox measures and shrinks: ``norm`` (default: a group's BatchNorm
            gamma/beta where it has them, the whole group otherwise), ``group`` (every slice, the
            paper's reading) or ``weights`` (everything but gamma/beta; diagnosis only).
        ridge: ``renorm`` (default: ``cancel`` + one uniform rescale per scope behind a BatchNorm that
            keeps the joint norm of its k largest groups: the survivors are not shrunk while the others
            fade; elsewhere it is ``cancel``), ``cancel`` (the ridge-free DC step, saturated groups are
            not shrunk) or ``keep`` (the plain prox of METHOD.md 6.2).
        tau0, tau_end: first and ramp-end prox steps of the continuation (dimensionless, 0 < tau0 < tau_end).
        select_frac: fraction of the phase over which the step ramps from ``tau0`` to ``tau_end``, in (0, 1].
        pace: ``geometric`` (default) or ``cubic`` (growth paced by the gradual-pruning target).
        eps: half-space threshold in [0, 1): a group with ``<theta~, theta> < eps ||theta||^2`` is zeroed.
        hs_frac: fraction of the phase's steps before the half-space step starts (``constant``), in [0, 1].
        stop_when_selected: under continuation, end the sparse phase at the step where every scope
            is released (exactly k groups left); its remaining whole epochs go to the fine-tune, which
            runs on the compact model (default True).
    """

    schedule: str = "continuation"
    prox_on: str = "norm"
    ridge: str = "renorm"
    tau0: float = 1e-4
    tau_end: float = 1.0
    select_frac: float = 0.1
    pace: str = "geometric"
    eps: float = 0.05
    hs_frac: float = 0.3
    stop_when_selected: bool = True

    def __post_init__(self) -> None:
        for name, valid in (("schedule", SCHEDULES), ("prox_on", PROX_ON), ("ridge", RIDGE_MODES),
                            ("pace", PACES)):
            if getattr(self, name) not in valid:
                raise ConfigError(f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")
        if not 0.0 < self.tau0 < self.tau_end:
            raise ConfigError(f"need 0 < tau0 < tau_end, got tau0={self.tau0}, tau_end={self.tau_end}")
        if not 0.0 < self.select_frac <= 1.0:
            raise ConfigError(f"select_frac must be in (0, 1], got {self.select_frac}")
        if not 0.0 <= self.eps < 1.0:
            raise ConfigError(f"eps must be in [0, 1), got {self.eps}")
        if not 0.0 <= self.hs_frac <= 1.0:
            raise ConfigError(f"hs_frac must be in [0, 1], got {self.hs_frac}")


class SelectionDone:
    """``fit`` callback: the sparse phase may stop once the continuation has released every scope."""

    def __init__(self, controller: LamContinuation) -> None:
        self.controller = controller

    def stop_requested(self) -> bool:
        """True when every scope has exactly k alive groups left (``fit`` checks it after every step)."""
        return bool(self.controller.released.all())


@register_method
class WgsefMethod(SparseMethod):
    """WGSEF prox-SGD to exactly k groups per scope, selected by the prox itself (see WgsefOptions)."""

    name = "wgsef"
    summary = "prox-SGD on loss + lam*WGSEF, step by continuation until exactly k groups per scope (default)"
    # Used only with schedule "constant" (the prox step is lr * lam); chosen from the sweeps in benchmarks/results/.
    default_lam = 0.5
    options_type = WgsefOptions

    def prepare(
        self, model: nn.Module, groupset: GroupSet, k: torch.Tensor, cfg: MethodConfig, *, total_steps: int
    ) -> SparsePhase:
        """ProxSGD with the WGSEF prox on the chosen slices, its step by continuation or constant."""
        opts = self.options_of(cfg, WgsefOptions)
        target = build_prox_target(model, groupset, opts.prox_on)
        controller = None
        hs_start = halfspace_start(opts.hs_frac, total_steps)
        if opts.schedule == "continuation":
            controller = LamContinuation.from_schedule(
                groupset.num_scopes, total_steps, tau0=opts.tau0, tau_end=opts.tau_end,
                select_frac=opts.select_frac, pace=opts.pace, sizes=groupset.scope_sizes)
            hs_start = 0
        # Rows outside the prox's measured part (conv rows behind a BN) train as in the dense phase.
        gwd = cfg.weight_decay if opts.prox_on == "norm" else 0.0
        opt = ProxSGD(model, groupset, k, ProxOptions(
            lr=cfg.lr, lam=cfg.lam, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            grouped_weight_decay=gwd, eps=opts.eps, hs_start=hs_start, ridge=opts.ridge),  # type: ignore[arg-type]
            target=target, controller=controller)
        callbacks: list[Any] = [GroupCountLogger(groupset, opt)]
        if controller is not None and opts.stop_when_selected:
            callbacks.append(SelectionDone(controller))
        return SparsePhase(optimizer=opt, callbacks=callbacks)

    def finalize(self, model: nn.Module, groupset: GroupSet, k: torch.Tensor,
                 phase: SparsePhase | None) -> dict[str, Any]:
        """Under continuation: when each scope reached k (optimiser step, -1: never) and its step then."""
        opt = phase.optimizer if phase is not None else None
        if not isinstance(opt, ProxSGD) or opt.controller is None:
            return {}
        c = opt.controller
        return {"released_at_step": c.released_at.tolist(),
                "tau_at_release": [float(f"{t:.6g}") for t in c.tau.tolist()],
                "all_released": bool(c.released.all())}
