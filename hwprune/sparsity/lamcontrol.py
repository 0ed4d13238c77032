"""λ continuation: a per-scope prox step that grows until the prox itself leaves exactly k groups.

The WGSEF prox step of ProxSGD is ``tau = lr * lam`` (dimensionless: a kept group is multiplied
by ``1 / (1 + tau d)`` per step, METHOD.md section 3.2). Because the prox is degree-1 homogeneous, no
weight scale enters ``tau``; what it competes with is the gradient's relative step
``lr ||g_G|| / ||theta_G||``, which differs between models, layers and phases of training. A fixed
λ is therefore either too weak (the final top-k projection makes the selection) or so strong that
it acts as a heavy ridge on the survivors (METHOD.md section 6.5). The controller removes the choice:

* every scope starts at ``tau0`` (negligible shrinkage) and its step is multiplied by ``growth`` after
  every optimiser step while the scope still has more than ``k`` alive (unfrozen) groups;
* ``growth`` is set so that ``tau`` reaches ``tau_end`` after ``select_frac`` of the phase's steps
  (``from_schedule``); it keeps growing afterwards (capped at ``tau_max``) until the scope is done,
  so the half-space step is guaranteed to finish the selection;
* a scope whose alive groups are down to ``k`` is *released*: ``tau = 0`` for the rest of the phase
  (no ridge on the survivors; they train as a masked fine-tune).

With ``pace="cubic"`` the growth is *paced*: the step of a scope grows only while it has more alive
groups than the gradual-pruning target ``k + (m - k) (1 - t / T)^3`` (Zhu and Gupta 2017, ``T`` =
``select_frac`` of the phase) and shrinks by the same factor (not below ``tau0``) while it is at or
below it, so groups are removed one after the other over the whole window instead of in the few
steps where a geometric ramp crosses the effective range of ``tau``. After ``T`` the target is ``k``
and the step grows until the scope is done.

Decisions depend only on integer group counts, never on float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["LamContinuation"]


@dataclass
class LamContinuation:
    """Per-scope prox step ``tau_s`` (float64, shape (S,)).

    Attributes:
        tau: current step per scope (S,); ``tau0`` at the start.
        growth: factor applied per optimiser step to scopes still selecting (> 1).
        tau_max: cap of ``tau``.
        released: (S,) bool, scopes that reached ``k`` (their step is 0 from then on).
        released_at: (S,) long, optimiser step at which each scope was released (-1: not yet).
    """

    tau: Tensor
    growth: float
    tau_max: float = 1e3
    pace: str = "geometric"
    window: int = 0  # optimiser steps of the selection window (pace "cubic")
    tau_min: float = 0.0  # floor of the paced step (tau0)
    sizes: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (S,) groups per scope
    released: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    released_at: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def __post_init__(self) -> None:
        self.tau = torch.as_tensor(self.tau, dtype=torch.float64).clone().reshape(-1)
        if not self.growth > 1.0 or not math.isfinite(self.growth):
            raise ValueError(f"growth must be a finite number > 1, got {self.growth}")
        if bool((self.tau <= 0).any()):
            raise ValueError("tau0 must be > 0 in every scope")
        n = self.tau.numel()
        if self.released.numel() != n:
            self.released = torch.zeros(n, dtype=torch.bool)
        if self.released_at.numel() != n:
            self.released_at = torch.full((n,), -1, dtype=torch.long)
        if self.pace not in ("geometric", "cubic"):
            raise ValueError(f"pace must be 'geometric' or 'cubic', got {self.pace!r}")
        if self.pace == "cubic" and (self.window < 1 or self.sizes.numel() != n):
            raise ValueError("pace 'cubic' needs window >= 1 and sizes of shape (S,)")

    @classmethod
    def from_schedule(cls, num_scopes: int, total_steps: int, *, tau0: float = 1e-4, tau_end: float = 1.0,
                      select_frac: float = 0.5, tau_max: float = 1e3, pace: str = "geometric",
                      sizes: Tensor | None = None) -> LamContinuation:
        """Growth from ``tau0`` by the factor that reaches ``tau_end`` after ``select_frac * total_steps`` steps.

        ``pace="cubic"`` paces it by the gradual-pruning target (module docstring; ``sizes`` (S,) = groups
        per scope).
        """
        if not 0.0 < tau0 < tau_end:
            raise ValueError(f"need 0 < tau0 < tau_end, got tau0={tau0}, tau_end={tau_end}")
        if not 0.0 < select_frac <= 1.0:
            raise ValueError(f"select_frac must be in (0, 1], got {select_frac}")
        steps = max(1, round(select_frac * max(1, int(total_steps))))
        growth = (tau_end / tau0) ** (1.0 / steps)
        sz = torch.zeros(0, dtype=torch.long) if sizes is None else torch.as_tensor(sizes, dtype=torch.long)
        return cls(torch.full((int(num_scopes),), float(tau0), dtype=torch.float64), growth, tau_max, pace=pace,
                   window=steps, tau_min=float(tau0), sizes=sz)

    def target(self, k: Tensor, step: int) -> Tensor:
        """(S,) alive groups the cubic pace aims at after optimiser step ``step`` (``k`` once the window is over)."""
        frac = max(0.0, 1.0 - (int(step) + 1) / self.window) ** 3
        return k.to(torch.long) + torch.ceil((self.sizes - k.to(torch.long)).to(torch.float64) * frac).to(torch.long)

    def steps(self) -> Tensor:
        """(S,) float64 prox step to use now: ``tau`` for selecting scopes, 0 for released ones."""
        return torch.where(self.released, torch.zeros_like(self.tau), self.tau)

    def advance(self, alive: Tensor, k: Tensor, step: int) -> None:
        """After an optimiser step: release scopes with ``alive <= k`` (both (S,) ints), grow the others."""
        done = torch.as_tensor(alive).to(torch.long) <= torch.as_tensor(k).to(torch.long)
        new = done & ~self.released
        self.released_at = torch.where(new, torch.full_like(self.released_at, int(step)), self.released_at)
        self.released = self.released | done
        grown = (self.tau * self.growth).clamp_max(self.tau_max)
        if self.pace == "cubic":
            ahead = torch.as_tensor(alive).to(torch.long) <= self.target(torch.as_tensor(k), step)
            grown = torch.where(ahead, (self.tau / self.growth).clamp_min(self.tau_min), grown)
        self.tau = torch.where(self.released, self.tau, grown)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers to checkpoint (restored by ``load_state_dict``)."""
        return {"tau": self.tau.clone(), "growth": self.growth, "tau_max": self.tau_max,
                "released": self.released.clone(), "released_at": self.released_at.clone(), "pace": self.pace,
                "window": self.window, "tau_min": self.tau_min, "sizes": self.sizes.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``."""
        self.tau = torch.as_tensor(state["tau"], dtype=torch.float64).clone()
        self.growth = float(state["growth"])
        self.tau_max = float(state["tau_max"])
        self.released = torch.as_tensor(state["released"], dtype=torch.bool).clone()
        self.released_at = torch.as_tensor(state["released_at"], dtype=torch.long).clone()
        self.pace = str(state.get("pace", "geometric"))
        self.window = int(state.get("window", 0))
        self.tau_min = float(state.get("tau_min", 0.0))
        self.sizes = torch.as_tensor(state.get("sizes", torch.zeros(0)), dtype=torch.long).clone()
