"""Optimizer factories for tests/scripts/ddp_train.py (``--optimizer tests.ddp_factories:NAME``)."""

from __future__ import annotations

import torch
from torch import nn

from hwprune.groups import build_groups
from hwprune.profiles import profile_from_dict
from hwprune.sparsity.proxsgd import ProxSGD
from hwprune.training.schedule import TrainConfig

K_CONV = 2  # the tiny net's conv has 4 output channels; ProxSGD must end with exactly 2


def channel_profile():
    """A per-layer channel profile for the tiny DDP net."""
    return profile_from_dict({"schema_version": 1, "name": "ddp-test", "description": "test",
                              "device": {"kind": "cpu", "vendor": "any", "arch": "any"},
                              "rules": [{"match": "Conv2d", "granularity": {"kind": "channel"}}]})


def prox_sgd(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """ProxSGD with a strong half-space step so the 4 conv channels reach k = 2 within a few epochs."""
    gs = build_groups(model, channel_profile(), torch.zeros(1, 1, 8, 8))
    return ProxSGD(model, gs, torch.tensor([K_CONV]), lr=cfg.lr, lam=2.0, momentum=cfg.momentum, eps=0.9,
                   hs_start=0)
