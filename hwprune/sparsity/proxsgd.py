"""ProxSGD: momentum SGD + the prox of ``lr * lam * WGSEF`` + half-space group zeroing.

One step (METHOD.md section 6.2), for the grouped parameters of a ``GroupSet``:

1. ``buf <- momentum * buf + grad`` (plain torch SGD semantics, dampening/nesterov supported);
2. ``v <- theta - lr * buf``;
3. ``theta~ <- prox_{lr * lam * WGSEF_{k,d}}(v)``: one root per scope, a per-group rescale;
4. after ``hs_start`` steps (half-space phase): a nonzero group with
   ``<theta~_G, theta_G> < eps * ||theta_G||^2`` is set to exactly zero and frozen; frozen groups stay
   zero (and their momentum is cleared).

Ungrouped parameters (e.g. the classifier) get plain momentum SGD with ``weight_decay``; grouped
tensors get ``grouped_weight_decay`` (default 0: the WGSEF already acts as a ridge on kept groups).
The inner product of step 4 is computed without copies: ``<theta~, theta> = s * (||theta||^2 -
lr * <d, theta>)`` where ``s`` is the group's prox scale and ``d`` the update direction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from hwprune.groups.groupset import GroupSet
from hwprune.sparsity import wgsef
from hwprune.sparsity.lamcontrol import LamContinuation
from hwprune.sparsity.proxstep import RIDGE_MODES, prox_factors
from hwprune.sparsity.proxtarget import ProxTarget
from hwprune.sparsity.selection import best_per_layer, layer_ids

__all__ = ["ProxSGD", "ProxOptions"]


@dataclass(frozen=True)
class ProxOptions:
    """Settings of one :class:`ProxSGD` (frozen; validated on construction).

    Attributes:
        lr: learning rate; the prox uses the *current* lr of the grouped param group (schedulers work).
        lam: regularisation strength of the WGSEF (mean group weight is 1); 0 = plain (masked) SGD.
        momentum, dampening, nesterov: torch SGD semantics.
        weight_decay: weight decay of the ungrouped parameters.
        grouped_weight_decay: weight decay of the grouped tensors (default 0: the WGSEF already acts
            as a ridge on kept groups).
        eps: half-space threshold in [0, 1).
        hs_start: first optimiser step of the half-space phase (zeroing + freezing).
        halfspace: run the half-space test at all (False for mask-fixed fine-tuning).
        freeze: keep zero groups at zero in the half-space phase.
        test_iterate: "prox" tests theta~ (default), "sgd" tests v (METHOD.md section 6.2).
        release_at_k: in the half-space phase with freezing, a scope whose alive groups are down to k
            gets no more prox (lambda -> 0 for it). At a k-sparse point the WGSEF is a pure ridge
            ``0.5 * sum d ||x_G||^2`` (METHOD.md section 6.5), so once the selection is final the prox
            would only shrink the survivors; this is METHOD's "lambda large during selection, small
            after", applied per scope (an hwprune decision, measured in the closing note).
        ridge: ``"keep"``: the prox of ``lr * lam * WGSEF`` (METHOD.md 6.2); ``"cancel"``: the proximal DC
            step of ``lam * (WGSEF - 0.5 sum_G d_G ||x_G||^2)`` (no shrinkage of saturated groups);
            ``"renorm"``: ``"cancel"`` + a uniform rescale of BatchNorm-backed scopes
            (``hwprune.sparsity.proxstep``; hwprune decisions, issue 11).
    """

    lr: float
    lam: float = 1e-3
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    grouped_weight_decay: float = 0.0
    eps: float = 0.05
    hs_start: int = 0
    halfspace: bool = True
    freeze: bool = True
    test_iterate: Literal["prox", "sgd"] = "prox"
    release_at_k: bool = True
    ridge: Literal["keep", "cancel", "renorm"] = "keep"

    def __post_init__(self) -> None:
        if self.lr < 0 or self.lam < 0:
            raise ValueError(f"lr and lam must be >= 0, got lr={self.lr}, lam={self.lam}")
        if not 0.0 <= self.eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {self.eps}")
        if self.test_iterate not in ("prox", "sgd"):
            raise ValueError(f"test_iterate must be 'prox' or 'sgd', got {self.test_iterate!r}")
        if self.ridge not in RIDGE_MODES:
            raise ValueError(f"ridge must be one of {', '.join(RIDGE_MODES)}, got {self.ridge!r}")


class ProxSGD(torch.optim.Optimizer):
    """Momentum SGD with the WGSEF prox on the groups of ``groupset``.

    Args:
        model: the module the ``groupset`` was built on (parameters are split into grouped/ungrouped).
        groupset: coupled, disjoint groups (``hwprune.groups.build_groups``).
        k: budget per scope, shape (S,) (``k_per_scope``).
        options: the optimiser's settings (:class:`ProxOptions`).
        target: which slices of each group the prox measures and rescales
            (``hwprune.sparsity.proxtarget``; None: the whole group).
        controller: per-scope prox-step continuation (``hwprune.sparsity.lamcontrol``); when set, the
            prox step of scope s is ``controller.steps()[s]`` instead of ``lr * lam``, and the
            controller advances after every step with the scope's alive-group count.
        **fields: shorthand for ``ProxOptions`` fields (``ProxSGD(m, gs, k, lr=0.1, lam=2.0)``);
            given together with ``options`` they replace its values.
    """

    def __init__(self, model: nn.Module, groupset: GroupSet, k: torch.Tensor | Sequence[int],
                 options: ProxOptions | None = None, *, target: ProxTarget | None = None,
                 controller: LamContinuation | None = None, **fields: Any) -> None:
        opts = dataclasses.replace(options, **fields) if options is not None else ProxOptions(**fields)
        named = dict(model.named_parameters())
        missing = [n for n in groupset.param_names if n not in named]
        if missing:
            raise ValueError(f"groupset parameters not found in model: {missing[:5]}")
        grouped_names = list(groupset.param_names)
        grouped = [named[n] for n in grouped_names]
        gset = {id(p) for p in grouped}
        ungrouped = [p for p in model.parameters() if id(p) not in gset and p.requires_grad]
        k_t = torch.as_tensor(list(k) if not isinstance(k, torch.Tensor) else k, dtype=torch.long)
        if k_t.shape != (groupset.num_scopes,):
            raise ValueError(f"k must have shape ({groupset.num_scopes},), got {tuple(k_t.shape)}")
        if bool((k_t < 1).any()):
            raise ValueError("k must be >= 1 in every scope")
        defaults = dict(lr=opts.lr, momentum=opts.momentum, dampening=opts.dampening, nesterov=opts.nesterov,
                        weight_decay=opts.weight_decay)
        param_groups: list[dict[str, Any]] = [
            {"params": grouped, "weight_decay": opts.grouped_weight_decay, "grouped": True}
        ]
        if ungrouped:
            param_groups.append({"params": ungrouped, "weight_decay": opts.weight_decay, "grouped": False})
        super().__init__(param_groups, defaults)
        self.options = opts
        self.groupset = groupset
        self._names = grouped_names
        self.k = k_t
        self.lam = float(opts.lam)
        self.eps = float(opts.eps)
        self.hs_start = int(opts.hs_start)
        self.halfspace = bool(opts.halfspace)
        self.freeze = bool(opts.freeze)
        self.test_iterate = opts.test_iterate
        self.release_at_k = bool(opts.release_at_k)
        self.step_count = 0
        self.frozen = torch.zeros(groupset.num_groups, dtype=torch.bool)
        self._layers = layer_ids(groupset)
        self.target = target
        self.controller = controller
        if controller is not None and controller.tau.shape != (groupset.num_scopes,):
            raise ValueError(f"controller has {controller.tau.numel()} scopes, groupset {groupset.num_scopes}")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The SGD state plus the frozen mask, step count, k and lambda (key ``hwprune``)."""
        sd = super().state_dict()
        sd["hwprune"] = {
            "frozen": self.frozen.clone(),
            "step_count": torch.tensor(self.step_count, dtype=torch.long),
            "k": self.k.clone(),
            "lam": torch.tensor(self.lam, dtype=torch.float64),
        }
        if self.controller is not None:
            sd["hwprune"]["controller"] = self.controller.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a frozen mask of another GroupSet's shape is a ValueError."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("hwprune", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            if extra["frozen"].shape != self.frozen.shape:
                raise ValueError("optimizer state was saved for a different GroupSet (frozen mask shape differs)")
            self.frozen = extra["frozen"].clone().to(torch.bool)
            self.step_count = int(extra["step_count"])
            self.k = extra["k"].clone().to(torch.long)
            self.lam = float(extra["lam"])
            if self.controller is not None and "controller" in extra:
                self.controller.load_state_dict(extra["controller"])

    def freeze_(self, group_ids: torch.Tensor | Iterable[int]) -> None:
        """Zero the given groups now and keep them zero for the rest of training."""
        ids = torch.as_tensor(list(group_ids) if not isinstance(group_ids, torch.Tensor) else group_ids)
        ids = ids.flatten().to(torch.long)
        if ids.numel() == 0:
            return
        self.frozen[ids] = True
        self.groupset.zero_(ids)
        self._clear_frozen_momentum()

    # ------------------------------------------------------------------ step
    def _sgd_direction(self, group: dict[str, Any]) -> dict[int, torch.Tensor]:
        """Update momentum buffers and return the update direction per parameter (by id)."""
        out: dict[int, torch.Tensor] = {}
        wd, mom, damp, nest = group["weight_decay"], group["momentum"], group["dampening"], group["nesterov"]
        for p in group["params"]:
            if p.grad is None:
                continue
            d_p = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
            if mom != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = torch.clone(d_p).detach()
                    state["momentum_buffer"] = buf
                else:
                    buf.mul_(mom).add_(d_p, alpha=1 - damp)
                d_p = d_p.add(buf, alpha=mom) if nest else buf
            out[id(p)] = d_p
        return out

    def _clear_frozen_momentum(self) -> None:
        if not bool(self.frozen.any()):
            return
        bufs = {}
        for name, p in zip(self._names, self.param_groups[0]["params"], strict=True):
            buf = self.state[p].get("momentum_buffer")
            if buf is not None:
                bufs[name] = buf
        if bufs:
            self.groupset.apply_mask_(bufs, ~self.frozen)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """SGD (momentum) step, then the WGSEF prox per scope and, after ``hs_start``, half-space zeroing."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gs = self.groupset
        for group in self.param_groups:
            dirs = self._sgd_direction(group)
            lr = group["lr"]
            halfspace_now = self.halfspace and self.step_count >= self.hs_start
            no_prox = self.lam == 0.0 and self.controller is None and not halfspace_now and not bool(self.frozen.any())
            if not group.get("grouped", False) or no_prox:  # ungrouped tensors, or nothing for the prox to do
                for p in group["params"]:  # (a compact fine-tune: no prox, nothing frozen): plain momentum SGD
                    if id(p) in dirs:
                        p.add_(dirs[id(p)], alpha=-lr)
                continue
            if halfspace_now:
                sq_prev = self._sq_norms()
                dir_map = {n: dirs[id(p)] for n, p in zip(self._names, group["params"], strict=True) if id(p) in dirs}
                d_dot = self._dot(dir_map) if dir_map else torch.zeros_like(sq_prev)
            for p in group["params"]:
                if id(p) in dirs:
                    p.add_(dirs[id(p)], alpha=-lr)
            s = self._prox_scales(lr)
            if halfspace_now:
                inner_v = sq_prev - lr * d_dot  # <v_G, theta_G>
                inner = inner_v * s if self.test_iterate == "prox" else inner_v
                newly = (sq_prev > 0) & (inner < self.eps * sq_prev) & ~self.frozen
                newly = self._cap_to_budget(newly, (s > 0) & ~self.frozen, inner / sq_prev.clamp_min(1e-300))
                if self.freeze:
                    self.frozen |= newly | (sq_prev == 0)
                    if self.release_at_k:
                        s = torch.where(self._released(), torch.ones_like(s), s)
                    s = torch.where(self.frozen, torch.zeros_like(s), s)
                else:
                    s = torch.where(newly, torch.zeros_like(s), s)
            elif bool(self.frozen.any()):
                s = torch.where(self.frozen, torch.zeros_like(s), s)
            if self.target is not None:
                self.target.scale_(gs, s)
            else:
                gs.scale_(s)
            self._clear_frozen_momentum()
            if self.controller is not None:
                alive = gs.to_padded((~self.frozen & (s > 0)).to(torch.float64)).sum(dim=1)
                self.controller.advance(alive, self.k, self.step_count)
        self.step_count += 1
        return loss

    def _prox_scales(self, lr: float) -> torch.Tensor:
        """(G,) factors of this step's prox (step ``lr * lam`` or the controller's; ``options.ridge``)."""
        gs = self.groupset
        step: float | torch.Tensor = self.controller.steps() if self.controller is not None else lr * self.lam
        free = None
        if self.options.ridge == "renorm" and self.target is not None:  # scopes whose groups all feed a BN
            free = gs.to_padded((~self.target.bn_backed).to(torch.float64)).sum(dim=1) == 0
        return gs.from_padded(prox_factors(gs.to_padded(self._sq_norms().sqrt()), self.k, step,
                                           gs.to_padded(gs.weights, fill=1.0), ridge=self.options.ridge,
                                           scale_free=free))

    def _sq_norms(self) -> torch.Tensor:
        """(G,) squared norms of the part of each group the prox acts on (``target``; default: all)."""
        return self.target.sq_norms(self.groupset) if self.target is not None else self.groupset.sq_norms()

    def _dot(self, dirs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(G,) ``<dirs_G, theta_G>`` over the part of each group the prox acts on."""
        return self.target.dot(self.groupset, dirs) if self.target is not None else self.groupset.dot(dirs)

    def _released(self) -> torch.Tensor:
        """(G,) bool: groups of scopes whose unfrozen groups number at most k (selection finished)."""
        gs = self.groupset
        alive = gs.to_padded((~self.frozen).to(torch.float64)).sum(dim=1)
        done = (alive <= self.k.to(torch.float64)).to(torch.float64)
        return gs.from_padded(done.unsqueeze(1).expand(-1, gs.to_padded(self.frozen.to(torch.float64)).shape[1])
                              .contiguous()) > 0.5

    def _cap_to_budget(self, newly: torch.Tensor, alive: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """Limit half-space zeroing so no scope drops below ``k`` alive groups.

        Within a scope, when more groups fail the test than ``alive - k`` allows, only the ones with
        the smallest ``<theta~, theta> / ||theta||^2`` ratio are zeroed. Returns the capped (G,) mask.
        """
        if not bool(newly.any()):
            return newly
        gs = self.groupset
        alive_per_scope = gs.to_padded(alive.to(torch.float64)).sum(dim=1)
        allowed = (alive_per_scope - self.k.to(torch.float64)).clamp_min(0)
        score = torch.where(newly, ratio, torch.full_like(ratio, torch.inf))
        padded = gs.to_padded(score, fill=torch.inf)
        order = torch.argsort(padded, dim=1, stable=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(padded.shape[1]).expand_as(order).contiguous())
        within = (ranks.to(torch.float64) < allowed.unsqueeze(1)).to(torch.float64)
        capped = newly & (gs.from_padded(within) > 0.5)
        if self._layers is not None:  # never zero the last alive group of a layer in a multi-layer scope
            survivors = alive & ~capped
            n = int(self._layers.max()) + 1
            left = torch.zeros(n, dtype=torch.long).index_add_(0, self._layers, survivors.to(torch.long))
            spare = best_per_layer(self._layers, ratio, capped) & (left[self._layers] == 0)
            capped = capped & ~spare
        return capped

    def penalty(self) -> torch.Tensor:
        """Current ``lam * sum_scopes WGSEF_{k,d}`` (float64 scalar), for logging."""
        gs = self.groupset
        vals = wgsef.value_from_norms(gs.to_padded(self._sq_norms().sqrt()), self.k,
                                      gs.to_padded(gs.weights, fill=1.0))
        return self.lam * vals.sum()
