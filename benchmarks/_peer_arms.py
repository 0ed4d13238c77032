"""Torch-Pruning arms of ``peer_compare.py``: one-shot magnitude and GroupNorm sparse learning.

Both arms start from the shared dense model, prune with Torch-Pruning's own ``BasePruner`` /
``GroupNormPruner`` (its importance, its dependency graph, its rounding), and fine-tune the compact
model with the same loop, data, schedule, learning rate and epochs as hwprune's fine-tune
(``hwprune.training.loop.fit``, plain momentum SGD, cosine). The pruning ratio is searched (bisection)
so that the compact model's MACs match hwprune's within ``MAC_RTOL``; Torch-Pruning's ``round_to``
is the profile's block when that match is possible, else ``None`` (finer widths, never worse for TP).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from hwprune.models.complexity import count_params_and_macs
from hwprune.training.loop import evaluate, fit
from hwprune.training.schedule import TrainConfig

__all__ = ["MAC_RTOL", "TpSettings", "match_ratio", "tp_magnitude_arm", "tp_groupnorm_arm", "classifier_of"]

MAC_RTOL = 0.03  # Torch-Pruning's compact MACs must be within 3 % of hwprune's


@dataclass(frozen=True)
class TpSettings:
    """Schedule shared with the hwprune arms.

    Attributes:
        epochs: post-dense epochs (every arm gets the same number).
        sparse_epochs: of those, the sparse-learning epochs (GroupNorm arm; hwprune's trained methods).
        lr: sparse-phase learning rate; finetune_lr: fine-tune learning rate (hwprune's default lr / 2).
        momentum / weight_decay / batch_size / seed: as hwprune's job.
        reg: GroupNormPruner regularisation (Torch-Pruning's published sparse-learning value 5e-4).
    """

    epochs: int
    sparse_epochs: int
    lr: float
    finetune_lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    seed: int
    reg: float = 5e-4


def classifier_of(model: nn.Module, num_classes: int) -> nn.Module:
    """The last Linear producing ``num_classes`` outputs (kept unpruned, as hwprune never prunes outputs)."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise ValueError(f"no Linear with {num_classes} outputs in {type(model).__name__}")
    return heads[-1]


def _pruner(cls: Callable[..., Any], model: nn.Module, example: torch.Tensor, ratio: float, round_to: int | None,
            num_classes: int, **extra: Any) -> Any:
    return cls(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
               ignored_layers=[classifier_of(model, num_classes)], round_to=round_to, global_pruning=False, **extra)


def _macs_at(dense: nn.Module, example: torch.Tensor, ratio: float, round_to: int | None, num_classes: int) -> int:
    model = copy.deepcopy(dense).eval()
    _pruner(tp.pruner.BasePruner, model, example, ratio, round_to, num_classes).step()
    return count_params_and_macs(model, example)[1]


def match_ratio(dense: nn.Module, example: torch.Tensor, target_macs: int, round_to: int | None,
                num_classes: int, iters: int = 18) -> tuple[float, int]:
    """Bisect Torch-Pruning's per-layer ratio so its compact MACs approach ``target_macs``.

    MACs are non-increasing in the ratio (stepwise under ``round_to``); returns the ratio whose MACs are
    closest to the target and those MACs.
    """
    lo, hi = 0.0, 0.95
    best = (0.0, _macs_at(dense, example, 0.0, round_to, num_classes))
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        macs = _macs_at(dense, example, mid, round_to, num_classes)
        if abs(macs - target_macs) < abs(best[1] - target_macs):
            best = (mid, macs)
        if macs > target_macs:
            lo = mid
        else:
            hi = mid
    return best


def choose_round_to(dense: nn.Module, example: torch.Tensor, target_macs: int, block: int,
                    num_classes: int) -> tuple[int | None, float, int]:
    """``round_to = block`` if its MAC match is within ``MAC_RTOL``, else ``None``; with the ratio and MACs."""
    ratio, macs = match_ratio(dense, example, target_macs, block, num_classes)
    if abs(macs - target_macs) <= MAC_RTOL * target_macs:
        return block, ratio, macs
    ratio_free, macs_free = match_ratio(dense, example, target_macs, None, num_classes)
    if abs(macs_free - target_macs) < abs(macs - target_macs):
        return None, ratio_free, macs_free
    return block, ratio, macs


def _train_cfg(s: TpSettings, epochs: int, lr: float) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=s.batch_size, lr=lr, momentum=s.momentum,
                       weight_decay=s.weight_decay, seed=s.seed, lr_schedule="cosine", progress=False)


class _RegularizedSGD(torch.optim.SGD):
    """SGD whose step first adds GroupNormPruner's sparse-learning term to the gradients (TP's recipe)."""

    def __init__(self, params: Any, pruner: Any, model: nn.Module, **kw: Any) -> None:
        super().__init__(params, **kw)
        self._pruner, self._model = pruner, model

    def step(self, closure: Any = None) -> Any:
        """``pruner.regularize(model)`` (gradient shrinkage), then the SGD step."""
        self._pruner.regularize(self._model)
        return super().step(closure)


def _finish(model: nn.Module, bundle: Any, s: TpSettings, ft_epochs: int, example: torch.Tensor,
            t0: float, extra: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    val = bundle.val if bundle.val is not None else bundle.test
    before = evaluate(model, val)["accuracy"]  # like hwprune's val_accuracy.projected: the test split stays unseen
    t_ft = time.perf_counter()
    if ft_epochs > 0:  # per-epoch validation pass as in hwprune's fine-tune, so epoch times compare
        fit(model, bundle.train, None, _train_cfg(s, ft_epochs, s.finetune_lr), eval_data=bundle.val,
            eval_name="val", phase="finetune")
    ft_s = time.perf_counter() - t_ft
    params, macs = count_params_and_macs(model, example)
    info = {"acc_before_finetune": before, "acc": evaluate(model, bundle.test)["accuracy"], "params": params,
            "macs": macs, "s_train": time.perf_counter() - t0, "s_finetune": ft_s, "epochs_finetune": ft_epochs,
            **extra}
    return model, info


def tp_magnitude_arm(dense: nn.Module, bundle: Any, example: torch.Tensor, ratio: float, round_to: int | None,
                     s: TpSettings) -> tuple[nn.Module, dict[str, Any]]:
    """One-shot ``GroupMagnitudeImportance`` pruning, then ``s.epochs`` fine-tune epochs on the compact model."""
    t0 = time.perf_counter()
    model = copy.deepcopy(dense)
    _pruner(tp.pruner.BasePruner, model, example, ratio, round_to, bundle.num_classes).step()
    return _finish(model, bundle, s, s.epochs, example, t0, {"sparse_epochs": 0})


def tp_groupnorm_arm(dense: nn.Module, bundle: Any, example: torch.Tensor, ratio: float, round_to: int | None,
                     s: TpSettings) -> tuple[nn.Module, dict[str, Any]]:
    """``GroupNormPruner`` sparse learning for ``s.sparse_epochs``, prune, fine-tune the remaining epochs."""
    t0 = time.perf_counter()
    model = copy.deepcopy(dense)
    pruner = _pruner(tp.pruner.GroupNormPruner, model, example, ratio, round_to, bundle.num_classes, reg=s.reg)
    if s.sparse_epochs > 0:
        opt = _RegularizedSGD(model.parameters(), pruner, model, lr=s.lr, momentum=s.momentum,
                              weight_decay=s.weight_decay)
        fit(model, bundle.train, opt, _train_cfg(s, s.sparse_epochs, s.lr), phase="sparse")
    pruner.step()
    return _finish(model, bundle, s, s.epochs - s.sparse_epochs, example, t0, {"sparse_epochs": s.sparse_epochs})
