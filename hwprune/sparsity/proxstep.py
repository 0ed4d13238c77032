"""The per-group factors of one WGSEF prox step, with or without the ridge on the kept groups.

``prox_factors(norms, k, step, d, ridge)`` works on padded (S, m_max) norms (one row per scope, zero
padding) and returns (S, m_max) factors to multiply each group by:

* ``"keep"``: ``prox_{step * WGSEF_{k,d}}`` (METHOD.md 3.2): ``u / (u + step d)``; on a point with at
  most k nonzero groups this is the ridge ``1 / (1 + step d)`` (METHOD.md 6.5).
* ``"cancel"``: the proximal DC step of ``WGSEF - 0.5 sum d ||x_G||^2`` (a penalty >= 0 that is exactly 0
  on every point with at most k nonzero groups, METHOD.md 9.1.2): a gradient step on the concave part,
  ``x -> (1 + step d) x``, then the prox. Saturated groups (``u = 1``) keep their norm; a group with
  ``u < 1`` shrinks by ``u (1 + step d) / (u + step d) < 1``. Factors stay in [0, 1].
* ``"renorm"``: ``"cancel"``, then each scope flagged ``scale_free`` is multiplied by one factor that
  restores the joint norm of its k largest groups. Used where a uniform rescaling of the scope is a
  symmetry of the network (its gamma/beta feed a BatchNorm); the prox is degree-1 homogeneous, so the
  selection is unchanged while the scope no longer shrinks as a whole when its groups have similar
  norms (all fractional).

Not from the paper: hwprune decisions measured in ``benchmarks/results/wgsef_diagnosis-*`` (issue 11).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hwprune.sparsity import wgsef

__all__ = ["RIDGE_MODES", "prox_factors", "topk_rescale"]

RIDGE_MODES = ("keep", "cancel", "renorm")


def topk_rescale(norms: Tensor, factors: Tensor, k: Tensor) -> Tensor:
    """(S,) factor per scope so that its k largest groups (by ``norms``) keep their joint norm after ``factors``.

    ``norms``, ``factors``: (S, m_max) float64; ``k``: (S,) long. Scopes whose top-k would vanish get 1.
    """
    order = torch.argsort(norms, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(norms.shape[1]).expand_as(order).contiguous())
    top = (ranks < k.to(torch.long).unsqueeze(1)).to(torch.float64)
    before = (norms * norms * top).sum(dim=1)
    after = (norms * norms * factors * factors * top).sum(dim=1)
    return torch.where(after > 0, (before / after.clamp_min(1e-300)).sqrt(), torch.ones_like(before))


def prox_factors(norms: Tensor, k: Tensor, step: float | Tensor, d: Tensor, *, ridge: str = "keep",
                 scale_free: Tensor | None = None) -> Tensor:
    """(S, m_max) float64 factors of one prox step.

    Args:
        norms: (S, m_max) group norms, zero-padded, >= 0.
        k: (S,) budgets.
        step: the prox step ``lr * lam``, a float or (S,) (0 = no prox in that scope).
        d: (S, m_max) group weights (padding 1).
        ridge: one of ``RIDGE_MODES`` (module docstring).
        scale_free: (S,) bool, scopes that ``"renorm"`` may rescale (None: none).
    """
    if ridge not in RIDGE_MODES:
        raise ValueError(f"ridge must be one of {RIDGE_MODES}, got {ridge!r}")
    if ridge == "keep":
        return wgsef.group_scales(norms, k, step, d)
    tau = torch.as_tensor(step, dtype=torch.float64).reshape(-1, 1).expand(d.shape[0], 1)
    lift = 1.0 + tau * d  # gradient step on -0.5 * step * sum d ||x_G||^2 (the concave part)
    s = wgsef.group_scales(norms * lift, k, step, d) * lift
    if ridge == "renorm" and scale_free is not None and bool(scale_free.any()):
        c = torch.where(scale_free, topk_rescale(norms, s, k), torch.ones(s.shape[0], dtype=torch.float64))
        s = s * c.unsqueeze(1)
    return s
