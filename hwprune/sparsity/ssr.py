"""SSR / AULM: structure-sparsity regularised filter pruning by scaled-dual ADMM (SSR.md section 2).

Splitting ``W = F`` per group (a group is a coupled "row": filter + bias + BN gamma/beta):

* F-step (closed form, per group): ``T = W + Y/rho``; ``F = T * scale(||T||)`` with the row prox
  ``row_prox_l21`` (group soft threshold) or ``row_prox_l20`` (exact group hard threshold);
* Y-step: ``Y <- Y + rho (W - F)``;
* W-step (done by the trainer): SGD on ``loss + penalty(model)``, ``penalty = rho/2 ||W - F + Y/rho||^2``
  over the grouped elements only.

Per-group lambda (an hwprune choice): ``lam_g = lam * mult[scope(g)] * w_g`` with the optional
per-scope multipliers ``AULMConfig.scope_multipliers`` (default 1 everywhere, i.e. one lambda for
every layer) and ``w_g = sqrt(d_g)`` for L2,1 (a norm) or ``d_g`` for L2,0 (a count), ``d_g`` the
GroupSet weights (all 1 under ``weight_mode: uniform``).

F and Y are full-shaped tensors per grouped parameter (dict name -> tensor); elements that belong to
no group are ignored (masked out of the penalty and of ``||W - F||``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hwprune.base.errors import ConfigError
from hwprune.groups import GroupSet

__all__ = [
    "VARIANTS", "MODES", "row_prox_l21", "row_prox_l20", "row_prox", "survivor_ratio", "AULMConfig",
    "AULMState", "group_index_map", "calibrate_multipliers", "survive_mask", "scope_multipliers_from",
    "TIE_RTOL",
]

VARIANTS = ("l21", "l20")
MODES = ("joint", "layerwise")


def _check_lr(lam: float | Tensor, rho: float) -> None:
    if not rho > 0:
        raise ConfigError(f"rho must be > 0, got {rho}")
    if bool((torch.as_tensor(lam) < 0).any()):
        raise ConfigError("lam must be >= 0")


def row_prox_l21(T_norms: Tensor, lam: float | Tensor, rho: float) -> Tensor:
    """Group soft threshold: scale ``max(||T|| - lam/rho, 0) / ||T||`` (0 for a zero row).

    Args:
        T_norms: (G,) group norms ``||T_g||`` (>= 0).
        lam: scalar or (G,) lambda per group.
        rho: the augmented-Lagrangian penalty, > 0.

    Returns:
        (G,) float64 scales in [0, 1); ``prox(T)_g = T_g * scale_g``.
    """
    _check_lr(lam, rho)
    n = T_norms.to(torch.float64)
    thr = torch.as_tensor(lam, dtype=torch.float64) / rho
    safe = torch.where(n > 0, n, torch.ones_like(n))
    return torch.where(n > thr, (n - thr) / safe, torch.zeros_like(n))


def row_prox_l20(T_norms: Tensor, lam: float | Tensor, rho: float) -> Tensor:
    """Exact group hard threshold (prox of ``lam * [F != 0]``): keep iff ``||T||^2 > 2 lam / rho``.

    Returns:
        (G,) float64 scales in {0, 1}.
    """
    _check_lr(lam, rho)
    n = T_norms.to(torch.float64)
    thr = 2.0 * torch.as_tensor(lam, dtype=torch.float64) / rho
    return (n * n > thr).to(torch.float64)


def row_prox(variant: str, T_norms: Tensor, lam: float | Tensor, rho: float) -> Tensor:
    """``row_prox_l21`` or ``row_prox_l20`` by name."""
    if variant == "l21":
        return row_prox_l21(T_norms, lam, rho)
    if variant == "l20":
        return row_prox_l20(T_norms, lam, rho)
    raise ConfigError(f"unknown SSR variant {variant!r}; valid: {', '.join(VARIANTS)}")


def survivor_ratio(variant: str, T_norms: Tensor, lam: Tensor, rho: float) -> Tensor:
    """(G,) float64 ``r_g`` such that group g survives the prox with lambda ``c * lam`` iff ``r_g > c``.

    L2,1: ``rho ||T|| / lam``; L2,0: ``rho ||T||^2 / (2 lam)``; ``inf`` where lam = 0 and ||T|| > 0.
    """
    n = T_norms.to(torch.float64)
    num = rho * n if variant == "l21" else rho * n * n / 2.0
    lam64 = lam.to(torch.float64)
    out = num / torch.where(lam64 > 0, lam64, torch.ones_like(lam64))
    return torch.where(lam64 > 0, out, torch.where(n > 0, torch.full_like(n, torch.inf), torch.zeros_like(n)))


@dataclass(frozen=True)
class AULMConfig:
    """AULM settings (SSR.md sections 2-3, 5).

    Attributes:
        variant: "l21" (group lasso, soft threshold) or "l20" (group count, hard threshold).
        lam: lambda (per layer before ``scope_multipliers``; the [CODE] LeNet values were 0.02-0.4).
        rho: fixed augmented-Lagrangian penalty (SSR.md: 1.0, never changed).
        inner_steps: SGD steps between two F/Y updates ([CODE]: 200).
        mode: "joint" (all scopes at once) or "layerwise" (one scope at a time).
        scope_multipliers: optional per-scope lambda multipliers, shape (S,); None = all 1.
        calibrate: at the final F-step, bisect a lambda multiplier per scope so k rows survive.
    """

    variant: Literal["l21", "l20"] = "l21"
    lam: float = 5e-3
    rho: float = 1.0
    inner_steps: int = 200
    mode: Literal["joint", "layerwise"] = "joint"
    scope_multipliers: tuple[float, ...] | None = None
    calibrate: bool = False

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown SSR variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        if self.mode not in MODES:
            raise ConfigError(f"unknown ssr_mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.inner_steps < 1:
            raise ConfigError(f"inner_steps must be >= 1, got {self.inner_steps}")
        _check_lr(self.lam, self.rho)
        if self.scope_multipliers is not None and any(m < 0 for m in self.scope_multipliers):
            raise ConfigError("scope_multipliers must be >= 0")


def group_index_map(gs: GroupSet, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per grouped parameter, a long tensor of its shape holding each element's group id (-1: none).

    Built from ``gs.apply_mask_`` alone: one pass per bit of the group id (log2 G passes, once).
    """
    names = list(dict.fromkeys(gs.param_names))
    G = gs.num_groups
    ids = torch.arange(G)

    def probe(keep: Tensor) -> dict[str, Tensor]:
        t = {n: torch.ones(like[n].shape, dtype=torch.uint8) for n in names}
        gs.apply_mask_(t, keep)
        return {n: v == 0 for n, v in t.items()}  # True where the element's group was dropped

    grouped = probe(torch.zeros(G, dtype=torch.bool))
    out = {n: torch.zeros(like[n].shape, dtype=torch.long) for n in names}
    for b in range(max(1, (G - 1).bit_length())):
        hit = probe(((ids >> b) & 1) == 0)
        for n in names:
            out[n] |= hit[n].to(torch.long) << b
    for n in names:
        out[n][~grouped[n]] = -1
    return out


# Two neighbouring ratios closer than this (relative) are treated as tied: a multiplier between them
# would sit within a few ulps of both, and which side a group lands on would depend on the CPU's rounding.
TIE_RTOL = 1e-9


def calibrate_multipliers(gs: GroupSet, ratio: Tensor, k: Tensor) -> Tensor:
    """One lambda multiplier ``c_s`` per scope, strictly between the k-th and (k+1)-th largest ratio.

    A group survives the F-step with multiplier ``c`` iff ``ratio_g > c`` (``survivor_ratio``). The
    multiplier is the midpoint of the k-th and (k+1)-th largest ratio of the scope, so the decision has
    a margin of half their gap instead of one ulp (the old bisection converged onto the boundary ratio
    itself). Ratios that tie at the boundary (relative gap below ``TIE_RTOL``) all survive: ``c`` moves
    down to the midpoint below the tied value (count >= k; the top-k trim then decides). When fewer than
    k groups can survive, ``c = 0``. Compare with ``survive_mask`` to get the same decision.

    Args:
        gs: the GroupSet (scopes).
        ratio: (G,) survivor ratios, >= 0 (``inf`` allowed).
        k: (S,) budgets.

    Returns:
        (S,) float64 multipliers.
    """
    r = gs.to_padded(ratio.to(torch.float64), fill=0.0)
    desc = torch.sort(r, dim=1, descending=True).values
    desc = torch.cat([desc, torch.zeros(desc.shape[0], 1, dtype=torch.float64)], dim=1)  # a 0 below every scope
    out = torch.zeros(r.shape[0], dtype=torch.float64)
    for s, kk in enumerate(k.tolist()):
        vals = desc[s]
        kk = int(kk)
        if kk < 1 or kk > vals.numel() - 1:
            continue
        a = float(vals[kk - 1])
        below = vals[kk:]
        lower = below[below < a * (1.0 - TIE_RTOL)] if a < torch.inf else below[torch.isfinite(below)]
        b = float(lower[0]) if lower.numel() else 0.0
        if a == torch.inf:
            out[s] = 2.0 * b + 1.0 if b > 0 else 1.0
        elif a > 0:
            out[s] = 0.5 * (a + b)
    return out


def survive_mask(gs: GroupSet, ratio: Tensor, multipliers: Tensor) -> Tensor:
    """(G,) bool: ``ratio_g > c_{scope(g)}``, the one form in which calibrated decisions are taken."""
    return ratio.to(torch.float64) > multipliers.to(torch.float64)[gs.scope_index]


class AULMState:
    """F, Y and the schedule-independent AULM updates for the grouped parameters of ``gs``.

    Args:
        model: the module ``gs`` was built on (its parameters are read, never written).
        gs: the GroupSet. cfg: AULM settings.
    """

    def __init__(self, model: nn.Module, gs: GroupSet, cfg: AULMConfig) -> None:
        named = dict(model.named_parameters())
        self.gs, self.cfg, self.rho = gs, cfg, float(cfg.rho)
        self.names = list(dict.fromkeys(gs.param_names))
        self.params = {n: named[n] for n in self.names}
        self.gid = group_index_map(gs, self.params)
        self.F = {n: p.detach().clone() for n, p in self.params.items()}
        self.Y = {n: torch.zeros_like(p) for n, p in self.params.items()}
        mult = torch.ones(gs.num_scopes, dtype=torch.float64)
        if cfg.scope_multipliers is not None:
            if len(cfg.scope_multipliers) != gs.num_scopes:
                raise ConfigError(f"scope_multipliers has {len(cfg.scope_multipliers)} values; the model has "
                                  f"{gs.num_scopes} scopes: {', '.join(gs.scope_names[:8])}")
            mult = torch.tensor(cfg.scope_multipliers, dtype=torch.float64)
        w = gs.weights.sqrt() if cfg.variant == "l21" else gs.weights.clone()
        self.lam_g = cfg.lam * mult[gs.scope_index] * w  # (G,) float64
        self.active = torch.ones(gs.num_groups, dtype=torch.bool)
        self._mask: dict[str, Tensor] = {}
        self._target: dict[str, Tensor] = {}
        self.iterations = 0
        self.set_active(self.active)

    # ------------------------------------------------------------------ helpers
    def _expand(self, per_group: Tensor, name: str, ungrouped: float) -> Tensor:
        """(G,) values -> a tensor shaped like parameter ``name`` (``ungrouped`` where gid = -1)."""
        table = torch.cat([per_group.to(torch.float64), torch.tensor([ungrouped], dtype=torch.float64)])
        gid = self.gid[name]
        return table[torch.where(gid >= 0, gid, torch.full_like(gid, self.gs.num_groups))]

    def _sync_device(self) -> None:
        dev = next(iter(self.params.values())).device
        if self.F[self.names[0]].device != dev:
            for d in (self.F, self.Y, self._mask, self._target):
                for n in list(d):
                    d[n] = d[n].to(dev)

    def set_active(self, active: Tensor) -> None:
        """Restrict F/Y and the penalty to the groups with ``active[g]`` (layerwise mode); (G,) bool."""
        self.active = torch.as_tensor(active, dtype=torch.bool).clone()
        for n, p in self.params.items():
            self._mask[n] = self._expand(self.active.to(torch.float64), n, 0.0).to(p.dtype).to(p.device)
            self.Y[n] = self.Y[n] * self._mask[n]
        self._refresh_target()

    def _refresh_target(self) -> None:
        self._target = {n: ((self.F[n] - self.Y[n] / self.rho) * self._mask[n]).detach() for n in self.names}

    # ------------------------------------------------------------------ ADMM updates
    @torch.no_grad()
    def f_step(self, scope_multipliers: Tensor | None = None, survive: Tensor | None = None) -> Tensor:
        """F <- row prox of ``T = W + Y/rho`` on active groups (F = T elsewhere). Returns (G,) scales.

        ``scope_multipliers`` (S,) optionally scales lambda per scope (calibration). ``survive`` (G,) bool,
        when given, is the keep decision already taken in ratio form (``survive_mask``): groups outside it
        are zeroed and groups inside it keep their prox scale, so the threshold is never re-derived in a
        second floating-point form.
        """
        self._sync_device()
        T = {n: self.params[n].detach() + self.Y[n] / self.rho for n in self.names}
        lam = self.lam_g if scope_multipliers is None else self.lam_g * scope_multipliers[self.gs.scope_index]
        scales = row_prox(self.cfg.variant, self.gs.norms(T), lam, self.rho)
        if survive is not None:
            scales = torch.where(survive, scales, torch.zeros_like(scales))
            lost = survive & self.active & (scales <= 0)
            if bool(lost.any()):  # the ratio said "survive" but the threshold rounded onto the norm
                raise ConfigError(f"SSR calibration: {int(lost.sum())} groups sit on the threshold; "
                                  "calibrate_multipliers must keep a margin")
        scales = torch.where(self.active, scales, torch.ones_like(scales))
        for n in self.names:
            self.F[n] = T[n] * self._expand(scales, n, 0.0).to(T[n].dtype).to(T[n].device)
        self._refresh_target()
        return scales

    @torch.no_grad()
    def y_step(self) -> None:
        """Y <- Y + rho (W - F) on the active grouped elements."""
        self._sync_device()
        for n in self.names:
            self.Y[n] = (self.Y[n] + self.rho * (self.params[n].detach() - self.F[n])) * self._mask[n]
        self._refresh_target()
        self.iterations += 1

    def penalty(self, model: nn.Module) -> Tensor:
        """``rho/2 * sum ||W - F + Y/rho||^2`` over active grouped elements (differentiable in W)."""
        self._sync_device()
        named = dict(model.named_parameters())
        total = None
        for n in self.names:
            w = named[n]
            diff = w * self._mask[n] - self._target[n]
            term = (diff * diff).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.rho * total

    # ------------------------------------------------------------------ diagnostics
    def t_norms(self) -> Tensor:
        """(G,) float64 group norms of ``T = W + Y/rho`` (the F-step's input)."""
        self._sync_device()
        return self.gs.norms({n: self.params[n].detach() + self.Y[n] / self.rho for n in self.names})

    def f_norms(self) -> Tensor:
        """(G,) float64 group norms of F."""
        return self.gs.norms(self.F)

    def zero_rows(self) -> Tensor:
        """(G,) bool: groups whose F row is exactly zero (``||F_g||_2 == 0``, SSR.md 5.4)."""
        return self.f_norms() == 0

    @torch.no_grad()
    def residual(self) -> float:
        """``||W - F||_F`` over the active grouped elements."""
        self._sync_device()
        sq = sum(float((((self.params[n].detach() - self.F[n]) * self._mask[n]) ** 2).sum()) for n in self.names)
        root: float = float(sq) ** 0.5
        return root

    def zero_rows_per_scope(self) -> list[int]:
        """Number of zero F rows in each scope (the per-layer compression count)."""
        z = self.zero_rows().to(torch.long)
        return torch.zeros(self.gs.num_scopes, dtype=torch.long).index_add_(0, self.gs.scope_index, z).tolist()


def scope_multipliers_from(value: Any, names: Sequence[str]) -> tuple[float, ...] | None:
    """``lam_per_scope`` option (list of S numbers or {scope name: number}) -> tuple, or None."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ConfigError(f"lam_per_scope: unknown scopes {unknown[:5]}; valid: {', '.join(names[:8])}")
        return tuple(float(value.get(n, 1.0)) for n in names)
    return tuple(float(v) for v in value)
