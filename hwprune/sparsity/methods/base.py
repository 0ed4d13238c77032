"""The method interface and its registry.

A method turns a trained dense model into one whose removable groups are exactly zero, with at
most ``k[s]`` nonzero groups per scope after the runner's final top-k projection. It does so by
handing the trainer a ``SparsePhase`` (optimiser + optional extra loss + callbacks) and, after the
phase, ``finalize`` (e.g. SSR masks the groups whose auxiliary rows are zero).
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups import GroupSet

__all__ = ["MethodConfig", "SparsePhase", "SparseMethod", "register_method", "get_method", "list_methods"]


@dataclass(frozen=True)
class MethodConfig:
    """Hyper-parameters shared by the methods (each method reads the ones it needs).

    Attributes:
        lr: learning rate of the sparse phase.
        lam: regularisation strength (WGSEF lambda, group-lasso lambda, SSR lambda per layer).
        momentum: SGD momentum.
        weight_decay: weight decay of ungrouped parameters.
        eps: half-space threshold (WGSEF).
        hs_frac: fraction of the sparse phase before the half-space step starts (WGSEF).
        rho: AULM penalty (SSR).
        inner_steps: SGD steps between two AULM F/Y updates (SSR).
        ssr_mode: "joint" (all layers at once) or "layerwise" (SSR).
        extra: free-form method options.
    """

    lr: float = 0.05
    lam: float = 5e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eps: float = 0.05
    hs_frac: float = 0.3
    rho: float = 1.0
    inner_steps: int = 50
    ssr_mode: str = "joint"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SparsePhase:
    """What a method hands to ``train.fit`` for its sparse phase."""

    optimizer: torch.optim.Optimizer
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None
    callbacks: list[Any] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


class SparseMethod(ABC):
    """A sparsification method acting on the groups of a ``GroupSet``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    trains: ClassVar[bool] = True  # False: no sparse training phase (one-shot methods)
    default_lam: ClassVar[float] = 5e-3  # lambda used when the job does not set one

    @abstractmethod
    def prepare(
        self,
        model: nn.Module,
        groupset: GroupSet,
        k: torch.Tensor,
        cfg: MethodConfig,
        *,
        total_steps: int,
    ) -> SparsePhase:
        """Build the optimiser/extra loss/callbacks of the sparse phase (``total_steps`` SGD steps)."""

    def finalize(self, model: nn.Module, groupset: GroupSet, k: torch.Tensor, phase: SparsePhase | None) -> dict:
        """After the sparse phase: make the method's selection exact zeros. Returns info for the log."""
        return {}


_REGISTRY: dict[str, type[SparseMethod]] = {}


def register_method(cls: type[SparseMethod]) -> type[SparseMethod]:
    """Class decorator registering a method under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def list_methods() -> dict[str, str]:
    """Registered method names -> one-line summaries (sorted by name)."""
    return {n: _REGISTRY[n].summary for n in sorted(_REGISTRY)}


def get_method(name: str) -> SparseMethod:
    """Instantiate a registered method; unknown names raise ConfigError listing the valid ones."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown method '{name}'{hint}; valid methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()
