"""SSR-L2,1 / SSR-L2,0 methods: AULM (scaled-dual ADMM) on the GroupSet's groups (SSR.md section 2).

Schedule (``MethodConfig.lam`` and the options :class:`SsrOptions`: ``rho`` (1.0), ``inner_steps`` (50),
``ssr_mode`` ("joint"), ``calibrate`` (False), ``lam_per_scope`` (None: the same lambda in every scope)):

* joint (default): F/Y for every grouped layer; an F-step then a Y-step from the dense W before SGD
  step 0 (``prepare``) and again after every ``inner_steps`` SGD steps; each SGD step (the W-step)
  is momentum SGD on ``loss + rho/2 ||W - F + Y/rho||^2`` (grouped tensors: no weight decay, as in
  [CODE]). Forward passes use the raw, unmasked W.
* layerwise: scopes in order, each gets an equal share ``total_steps / S`` of the steps with only
  its groups in F/Y/penalty; the share starts with an F/Y step. At the end of a share the scope's
  zero-F rows are masked (zeroed, momentum cleared) and kept zero for the rest of the phase -- the
  [CODE] "mask then fine-tune" runs concurrently with the next layer's AULM (all parameters train).

``finalize``: one last F-step from the final W and Y (the last ADMM iteration), then per scope
keep the top-``k`` groups by ``||F_g|| / sqrt(d_g)`` and zero the rest of W. Every zero-F row is
therefore removed whenever at least ``k`` rows survive; if more than ``k`` survive the smallest F
rows go (the **default**: lambda cannot be tuned per run here, so the budget decides, ranked by
F); if fewer than ``k`` survive, the zero-F rows with the largest ``||W_g|| / sqrt(d_g)`` are kept
so the budget is met exactly (reported as ``revived``). The runner's projection is then a no-op.
With ``calibrate: true`` the last F-step uses one lambda multiplier per scope, bisected
so exactly ``k`` rows of F survive (unless norms tie), i.e. lambda itself selects the rows.
The W-step should nearly solve its subproblem: pick ``inner_steps * lr * rho`` well above 1 (the
defaults 50 * 0.05 * 1 shrink the gap to ~8 %; [CODE] used 200 * 0.01). ``history`` in the info
holds ``[step, zero F rows, ||W - F||]`` right after each F-step (the Y-step's primal residual).
AULM state (F, Y) is not checkpointed: a resumed sparse phase restarts it from the dense W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups.groupset import GroupSet
from hwprune.groups.topk import topk_mask
from hwprune.sparsity.methods.base import MethodConfig, MethodOptions, SparseMethod, SparsePhase, register_method
from hwprune.sparsity.monitor import GroupCountLogger
from hwprune.sparsity.ssr import (
    MODES,
    AULMConfig,
    AULMState,
    calibrate_multipliers,
    scope_multipliers_from,
    survive_mask,
    survivor_ratio,
)

__all__ = ["AULMDriver", "SsrL21Method", "SsrL20Method", "SsrOptions", "selection_key"]


@dataclass(frozen=True)
class SsrOptions(MethodOptions):
    """Options of ``ssr-l21`` / ``ssr-l20`` (SSR.md sections 2-5).

    Attributes:
        rho: AULM penalty, > 0 (SSR.md: 1.0, never changed).
        inner_steps: SGD steps between two F/Y updates, >= 1.
        ssr_mode: "joint" (all layers at once) or "layerwise" (one scope at a time).
        calibrate: at the final F-step, bisect one lambda multiplier per scope so k rows survive.
        lam_per_scope: scope name -> lambda multiplier, or one per scope in order (None: 1 everywhere).
    """

    rho: float = 1.0
    inner_steps: int = 50
    ssr_mode: str = "joint"
    calibrate: bool = False
    lam_per_scope: dict[str, float] | list[float] | None = None

    def __post_init__(self) -> None:
        if not self.rho > 0:
            raise ConfigError(f"rho must be > 0, got {self.rho}")
        if self.inner_steps < 1:
            raise ConfigError(f"inner_steps must be >= 1, got {self.inner_steps}")
        if self.ssr_mode not in MODES:
            raise ConfigError(f"ssr_mode must be one of {', '.join(MODES)}; got {self.ssr_mode!r}")


def selection_key(state: AULMState) -> torch.Tensor:
    """(G,) float64 ranking key: ``1 + ||F||/sqrt(d)`` for nonzero F rows, else ``s/(1+s)``, ``s = ||W||/sqrt(d)``.

    Every nonzero F row ranks above every zero one; zero rows are ordered by their W norm.
    """
    gs = state.gs
    sd = gs.weights.sqrt()
    fs = state.f_norms() / sd
    ws = gs.norms() / sd
    return torch.where(fs > 0, 1.0 + fs, ws / (1.0 + ws))


def _sgd(model: nn.Module, gs: GroupSet, cfg: MethodConfig) -> torch.optim.SGD:
    """Momentum SGD: grouped tensors without weight decay, the rest with ``cfg.weight_decay``."""
    grouped_names = set(gs.param_names)
    grouped = [p for n, p in model.named_parameters() if n in grouped_names]
    rest = [p for n, p in model.named_parameters() if n not in grouped_names and p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": grouped, "weight_decay": 0.0}]
    if rest:
        groups.append({"params": rest, "weight_decay": cfg.weight_decay})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


class AULMDriver:
    """``train.fit`` callback running the AULM schedule on an ``AULMState`` (see module docstring).

    Args:
        state: F/Y state. optimizer: the W-step optimiser (its momentum of masked groups is cleared).
        total_steps: SGD steps of the sparse phase. k: (S,) budgets (layerwise masking keeps >= k).
    """

    def __init__(self, state: AULMState, optimizer: torch.optim.Optimizer, total_steps: int, k: torch.Tensor) -> None:
        self.state, self.optimizer, self.k = state, optimizer, k
        self.total_steps = max(1, int(total_steps))
        self.inner = state.cfg.inner_steps
        gs = state.gs
        self.layerwise = state.cfg.mode == "layerwise"
        S = gs.num_scopes if self.layerwise else 1
        self.bounds = [round(i * self.total_steps / S) for i in range(S + 1)]
        self.stage = 0
        self.dead = torch.zeros(gs.num_groups, dtype=torch.bool)
        self.history: list[list[float]] = []  # [step, zero F rows, ||W - F||] per ADMM iteration

    def _admm(self, step: int) -> None:
        self.state.f_step()
        self.state.y_step()
        self.history.append([step, int(self.state.zero_rows().sum()), round(self.state.residual(), 6)])

    def _activate(self, stage: int) -> None:
        self.stage = stage
        if self.layerwise:
            self.state.set_active(self.state.gs.scope_index == stage)

    def start(self) -> None:
        """First ADMM iteration from the current (dense) W, before SGD step 0."""
        self._activate(0)
        self._admm(0)

    @torch.no_grad()
    def _close_stage(self) -> None:
        """Layerwise: mask the zero-F rows of the current scope (at least ``k`` rows stay)."""
        gs = self.state.gs
        in_scope = gs.scope_index == self.stage
        drop = in_scope & self.state.zero_rows() & ~topk_mask(gs, self.k, selection_key(self.state))
        self.dead |= drop
        self._zero_dead()

    def _zero_dead(self) -> None:
        if not bool(self.dead.any()):
            return
        gs = self.state.gs
        gs.zero_(torch.nonzero(self.dead).flatten())
        bufs = {}
        for n, p in self.state.params.items():
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                bufs[n] = buf
        if bufs:
            gs.apply_mask_(bufs, ~self.dead)

    def on_step_end(self, step: int, epoch: int) -> None:
        """Run the F/Y (ADMM) updates every ``inner_steps`` SGD steps; switch scopes in layerwise mode."""
        nxt = step + 1
        self._zero_dead()
        if self.layerwise and self.stage + 1 < len(self.bounds) - 1 and nxt >= self.bounds[self.stage + 1]:
            self._close_stage()
            stage = self.stage + 1
            while stage + 1 < len(self.bounds) - 1 and nxt >= self.bounds[stage + 1]:
                stage += 1  # scopes with an empty share (fewer steps than scopes)
            self._activate(stage)
            self._admm(nxt)
            return
        start = self.bounds[self.stage]
        if nxt < self.total_steps and (nxt - start) % self.inner == 0:
            self._admm(nxt)

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        """ADMM iterations, residual and zero F rows, merged into the epoch record."""
        out: dict[str, Any] = {"aulm_iterations": self.state.iterations,
                               "aulm_zero_rows": self.state.zero_rows_per_scope(),
                               "aulm_residual": self.state.residual()}
        if self.layerwise:
            out["aulm_scope"] = self.state.gs.scope_names[self.stage]
        return out


def _aulm_config(variant: str, gs: GroupSet, lam: float, opts: SsrOptions) -> AULMConfig:
    mults = scope_multipliers_from(opts.lam_per_scope, gs.scope_names)
    return AULMConfig(variant=variant, lam=lam, rho=float(opts.rho),  # type: ignore[arg-type]
                      inner_steps=int(opts.inner_steps), mode=opts.ssr_mode,  # type: ignore[arg-type]
                      scope_multipliers=mults, calibrate=opts.calibrate)


class _SsrMethod(SparseMethod):
    """Shared AULM implementation; subclasses fix ``variant``."""

    variant: ClassVar[str]
    options_type = SsrOptions

    def prepare(
        self, model: nn.Module, groupset: GroupSet, k: torch.Tensor, cfg: MethodConfig, *, total_steps: int
    ) -> SparsePhase:
        """SGD on loss + the AULM penalty, with the ADMM driver as a step callback."""
        acfg = _aulm_config(self.variant, groupset, cfg.lam, self.options_of(cfg, SsrOptions))
        opt = _sgd(model, groupset, cfg)
        state = AULMState(model, groupset, acfg)
        driver = AULMDriver(state, opt, total_steps, k)
        driver.start()
        return SparsePhase(optimizer=opt, extra_loss=state.penalty, callbacks=[driver, GroupCountLogger(groupset)],
                           state={"aulm": state, "driver": driver, "config": acfg})

    @torch.no_grad()
    def finalize(self, model: nn.Module, groupset: GroupSet, k: torch.Tensor,
                 phase: SparsePhase | None) -> dict[str, Any]:
        """Last F-step (optionally calibrated), then keep the top-k rows by ``||F||`` per scope."""
        if phase is None or "aulm" not in phase.state:  # no sparse phase ran: one F-step from the dense W
            acfg = _aulm_config(self.variant, groupset, MethodConfig().lam, SsrOptions())
            state, driver = AULMState(model, groupset, acfg), None
        else:
            state, driver = phase.state["aulm"], phase.state["driver"]
        acfg = state.cfg
        residual = state.residual()  # ||W - F|| after the W-steps, before the last F-step
        mults = survive = None
        if acfg.calibrate:
            ratio = survivor_ratio(acfg.variant, state.t_norms(), state.lam_g, state.rho)
            ratio = torch.where(state.active, ratio, torch.zeros_like(ratio))
            mults = calibrate_multipliers(groupset, ratio, k)
            survive = survive_mask(groupset, ratio, mults)
        state.f_step(mults, survive)
        f_zero = state.zero_rows()
        keep = topk_mask(groupset, k, selection_key(state))
        drop = ~keep & groupset.nonzero()
        if bool(drop.any()):
            groupset.zero_(torch.nonzero(drop).flatten())
        per_scope = torch.zeros(groupset.num_scopes, dtype=torch.long)
        info: dict[str, Any] = {
            "variant": acfg.variant, "mode": acfg.mode, "lam": acfg.lam, "rho": acfg.rho,
            "inner_steps": acfg.inner_steps, "calibrated": acfg.calibrate,
            "admm_iterations": state.iterations, "residual": residual,
            "f_zero_rows": per_scope.clone().index_add_(0, groupset.scope_index, f_zero.long()).tolist(),
            "revived": int((keep & f_zero & groupset.nonzero()).sum()),
            "trimmed_by_topk": int((drop & ~f_zero).sum()),
        }
        if mults is not None:
            info["lam_multipliers"] = [round(float(m), 6) for m in mults]
        if driver is not None:
            info["history"] = driver.history
        return info


@register_method
class SsrL21Method(_SsrMethod):
    """SSR-L2,1: AULM with the group soft threshold (group lasso over filters)."""

    name = "ssr-l21"
    summary = "SSR-L2,1: AULM/ADMM, group soft-threshold F-step; keep top-k rows by ||F|| (Lin et al. 2019)"
    variant = "l21"


@register_method
class SsrL20Method(_SsrMethod):
    """SSR-L2,0: AULM with the exact group hard threshold (count of surviving filters)."""

    name = "ssr-l20"
    summary = "SSR-L2,0: AULM/ADMM, exact group hard-threshold F-step; keep top-k rows by ||F||"
    variant = "l20"
