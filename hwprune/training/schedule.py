"""What a training phase is configured with: ``TrainConfig``, its history, seeding and the LR schedule."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from hwprune.base.errors import ConfigError, HwpruneError

__all__ = ["TrainConfig", "TrainHistory", "NonFiniteLossError", "seed_everything", "epoch_seed", "make_scheduler"]


class NonFiniteLossError(HwpruneError):
    """The training loss became NaN/Inf; the run stops and the last checkpoint is left untouched."""

    def __init__(self, phase: str, epoch: int, step: int, value: float) -> None:
        super().__init__(
            f"non-finite loss {value} in phase '{phase}' at epoch {epoch}, step {step}; "
            "lower the learning rate or the penalty, or enable grad_clip"
        )
        self.phase, self.epoch, self.step, self.value = phase, epoch, step, value


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters.

    ``batch_size`` is per process under DDP; ``lr`` etc. are used only when ``fit`` builds the SGD
    optimiser itself (``optimizer=None``).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    lr_schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: int = 0
    log_every: int = 50  # steps between progress updates (0 = only per epoch)
    num_workers: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    progress: bool | None = None  # None: show bars only when stderr is a terminal
    grad_clip: float | None = None  # max global grad norm, None = off
    max_steps: int | None = None  # optimiser steps in all (the last epoch ends early); None: epochs x steps/epoch

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("cosine", "step", "constant"):
            raise ConfigError(f"lr_schedule '{self.lr_schedule}' unknown; choose cosine, step or constant")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"device '{self.device}' unknown; choose cpu, cuda or auto")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "log_every", "num_workers", "lr", "momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be > 0 or None, got {self.grad_clip}")


@dataclass
class TrainHistory:
    """Per-epoch records of one ``fit`` phase (the same dicts as the JSON-lines log)."""

    phase: str
    records: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None  # epoch of the checkpoint the run resumed from

    @property
    def last(self) -> dict[str, Any] | None:
        """The last epoch's record, or None before any epoch finished."""
        return self.records[-1] if self.records else None

    def column(self, key: str) -> list[Any]:
        """Values of ``key`` over epochs (None where an epoch lacks it)."""
        return [r.get(key) for r in self.records]


def seed_everything(seed: int) -> torch.Generator:
    """Seed python ``random``, NumPy and torch (CPU and CUDA).

    Returns:
        A CPU generator seeded with ``seed``, for DataLoader shuffling.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of one epoch of one process, derived from the run seed (resume reproduces it exactly)."""
    return (seed * 1_000_003 + epoch * 10_007 + rank) % 2**63


class _LRFactor:
    """Per-step LR multiplier; its ``__dict__`` (plain values) is what LambdaLR checkpoints."""

    def __init__(self, kind: str, total_steps: int, warmup_steps: int, milestones: list[int]) -> None:
        self.kind, self.total_steps, self.warmup_steps, self.milestones = kind, total_steps, warmup_steps, milestones

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
            return 0.5 * (1.0 + math.cos(math.pi * t))
        if self.kind == "step":
            return 0.1 ** sum(step >= m for m in self.milestones)
        return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """Per-step LambdaLR: linear warm-up over ``warmup_epochs``, then ``cfg.lr_schedule``.

    cosine: half cosine from the base LR to 0 over the remaining steps; step: x0.1 at 50 % and
    75 % of the epochs; constant: the base LR. Step it once per optimiser step. ``cfg.max_steps``
    (when set) is the schedule's length instead of ``epochs x steps_per_epoch``.
    """
    if steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    milestones = ([int(cfg.epochs * f) * steps_per_epoch for f in (0.5, 0.75)] if cfg.max_steps is None
                  else [int(total * f) for f in (0.5, 0.75)])
    factor = _LRFactor(cfg.lr_schedule, total, cfg.warmup_epochs * steps_per_epoch, milestones)
    return LambdaLR(optimizer, lr_lambda=factor)
