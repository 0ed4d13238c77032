"""The one training-phase engine of hwprune: the train job and the N:M phase both run through it.

* :class:`PhaseRunner` runs a :class:`Phase` (name, epochs, lr, optimiser, extra loss, callbacks)
  with the job's shared settings (:class:`PhaseContext`: data, batch size, momentum, weight decay,
  seed, device, log, checkpoints, resume) and evaluates models on the validation split.
* :func:`sparsify` is the sequence after a dense model exists::

      sparse phase (the method's, or the N:M prox)  ->  finalize  ->  top-k projection
      -> hooks.after_projection  ->  [surgery -> hooks.after_surgery]  ->  fine-tune, zero groups frozen

Extension points (each a one-line addition for a recipe): ``Phase.extra_loss(model)`` and
``Phase.batch_loss(inputs, outputs, labels)`` add a loss term to a phase (e.g. a distillation loss
in ``SparsifySpec.finetune_batch_loss``); ``Hooks`` run a ``ModelHook(model, runner)`` after the
projection and after the surgery, with ``runner.train_batches()`` at hand (e.g. recalibrating
BatchNorm statistics on training batches).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from hwprune.groups.groupset import GroupSet
from hwprune.sparsity.monitor import GroupCountLogger, ZeroCauseTracker
from hwprune.sparsity.proxsgd import ProxOptions, ProxSGD
from hwprune.sparsity.selection import project_to_k_
from hwprune.training import distributed as ddp
from hwprune.training.loop import BatchLoss, evaluate, fit
from hwprune.training.schedule import TrainConfig, TrainHistory

__all__ = ["PhaseContext", "Phase", "PhaseRunner", "Hooks", "ModelHook", "SparsifySpec", "SparsifyResult",
           "sparsify", "masked_optimizer", "epochs_run", "steps_run", "EVAL_BATCH"]

EVAL_BATCH = 256  # batch size of every evaluation (accuracy does not depend on it)
ExtraLoss = Callable[[nn.Module], Tensor]


@dataclass(frozen=True)
class PhaseContext:
    """What every phase of one job shares.

    Attributes:
        train_data: training images and labels (shuffled per epoch from ``seed``).
        val_data: the validation split, evaluated after every epoch (None: no per-epoch evaluation).
        batch_size: per process under DDP. momentum / weight_decay: SGD settings of built optimisers.
        seed: training seed; a phase adds its ``seed_offset``. device: cpu, cuda or auto.
        progress: progress bars (None: only on a terminal).
        log_path: JSON-lines log every phase appends to (None: no log).
        checkpoint_root: ``<root>/<phase name>/last.pt`` after every epoch (None: no checkpoints).
        resume: continue each phase from its checkpoint.
    """

    train_data: Dataset[Any]
    val_data: Dataset[Any] | None = None
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "cpu"
    progress: bool | None = None
    log_path: Path | None = None
    checkpoint_root: Path | None = None
    resume: bool = False


@dataclass(frozen=True)
class Phase:
    """One training phase.

    Attributes:
        name: its name in the log and the checkpoint directory (``dense``, ``sparse``, ``finetune``, ...).
        epochs: epochs (0: the phase is skipped).
        lr: base learning rate (cosine schedule unless ``schedule`` says otherwise).
        optimizer: the phase's optimiser, built on the model beforehand; None: momentum SGD from the context.
        extra_loss: ``extra_loss(model) -> scalar`` added to the task loss (a penalty).
        batch_loss: ``batch_loss(inputs, outputs, labels) -> scalar`` added to the task loss (a term that
            needs the batch, e.g. distillation: ``lambda x, out, y: kd(out, teacher(x))``).
        callbacks: ``fit`` callbacks (``on_step_end`` / ``on_epoch_end``).
        schedule: cosine, step or constant. seed_offset: added to the context's seed.
        steps: optimiser steps in all (the cosine runs over them; the last epoch ends early); None: ``epochs``
            whole epochs. ``epochs`` must then be ``ceil(steps / steps per epoch)``.
    """

    name: str
    epochs: int
    lr: float
    optimizer: torch.optim.Optimizer | None = None
    extra_loss: ExtraLoss | None = None
    batch_loss: BatchLoss | None = None
    callbacks: tuple[Any, ...] = ()
    schedule: str = "cosine"
    seed_offset: int = 0
    steps: int | None = None


class PhaseRunner:
    """Runs phases with one context (see the module docstring)."""

    def __init__(self, ctx: PhaseContext) -> None:
        self.ctx = ctx

    def steps(self, epochs: int) -> int:
        """Optimiser steps of ``epochs`` epochs on this process's training data."""
        return epochs * self.steps_per_epoch()

    def steps_per_epoch(self) -> int:
        """Optimiser steps of one epoch on this process's training data (the last batch may be short)."""
        per_process = math.ceil(len(self.ctx.train_data) / ddp.get_world_size())  # type: ignore[arg-type]
        return math.ceil(per_process / self.ctx.batch_size)  # DistributedSampler pads to equal shards

    def train_config(self, phase: Phase) -> TrainConfig:
        """The ``TrainConfig`` ``fit`` gets for ``phase``."""
        c = self.ctx
        return TrainConfig(epochs=max(1, phase.epochs), batch_size=c.batch_size, lr=phase.lr, momentum=c.momentum,
                           weight_decay=c.weight_decay, seed=c.seed + phase.seed_offset,
                           lr_schedule=phase.schedule, device=c.device, progress=c.progress,  # type: ignore[arg-type]
                           max_steps=phase.steps)

    def run(self, model: nn.Module, phase: Phase) -> TrainHistory:
        """Train ``model`` in place for ``phase``; returns its history (empty when ``epochs == 0``)."""
        if phase.epochs <= 0:
            return TrainHistory(phase=phase.name)
        c = self.ctx
        ckpt = c.checkpoint_root / phase.name if c.checkpoint_root is not None else None
        return fit(model, c.train_data, phase.optimizer, self.train_config(phase), eval_data=c.val_data,
                   eval_name="val", extra_loss=phase.extra_loss, batch_loss=phase.batch_loss,
                   callbacks=phase.callbacks, log_path=c.log_path,
                   checkpoint_dir=ckpt, resume=c.resume and ckpt is not None, phase=phase.name)

    def val_accuracy(self, model: nn.Module) -> float | None:
        """Top-1 accuracy on the validation split (None without one)."""
        if self.ctx.val_data is None:
            return None
        return evaluate(model, self.ctx.val_data, batch_size=EVAL_BATCH)["accuracy"]

    def train_batches(self, n: int | None = None, batch_size: int | None = None,
                      seed: int | None = None) -> Iterator[Tensor]:
        """Up to ``n`` batches of training images (e.g. to recalibrate BatchNorm statistics).

        In dataset order, or shuffled by ``seed`` (a fixed random sample for that seed).
        """
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        loader = DataLoader(self.ctx.train_data, batch_size=batch_size or self.ctx.batch_size,
                            shuffle=seed is not None, generator=gen)
        for i, (x, _) in enumerate(loader):
            if n is not None and i >= n:
                return
            yield x


ModelHook = Callable[[nn.Module, PhaseRunner], None]


@dataclass
class Hooks:
    """Model hooks of :func:`sparsify` (run in order; each may change the model in place).

    ``before_projection`` run after the method's finalize, before the validation accuracy of the
    sparse model is measured and the top-k projection applied.
    """

    before_projection: list[ModelHook] = field(default_factory=list)
    after_projection: list[ModelHook] = field(default_factory=list)
    after_surgery: list[ModelHook] = field(default_factory=list)


Surgery = Callable[[nn.Module, GroupSet], tuple[nn.Module, GroupSet, Any]]


@dataclass(frozen=True)
class SparsifySpec:
    """The sequence after the dense model (see the module docstring).

    Attributes:
        sparse: the sparse phase (the method's optimiser and losses); None: one-shot (no training).
        finetune: the fine-tune (its optimiser is built by :func:`masked_optimizer`; ``optimizer`` ignored).
        surgery: ``surgery(masked model, groups) -> (compact model, its groups, record)``; None: the
            fine-tune runs on the masked model.
        finalize: the method's finalize (after the sparse phase, before the projection) -> info.
        on_projected: called with the masked model right after the projection (e.g. to save it).
        finetune_batch_loss: added to the fine-tune's loss, ``(inputs, outputs, labels) -> scalar``
            (e.g. distillation from the dense model's outputs on the same inputs).
        hooks: after-projection / after-surgery model hooks.
    """

    sparse: Phase | None
    finetune: Phase
    surgery: Surgery | None = None
    finalize: Callable[[], dict[str, Any]] | None = None
    on_projected: Callable[[nn.Module], None] | None = None
    finetune_batch_loss: BatchLoss | None = None
    hooks: Hooks = field(default_factory=Hooks)


@dataclass
class SparsifyResult:
    """What :func:`sparsify` did: the final model and the numbers the job reports.

    ``zeroed_by``: cause -> (S,) groups of each scope that are zero at the end for that cause:
    ``dead`` (zero before the sparse phase), ``prox`` / ``halfspace`` (the sparse phase's steps,
    ``hwprune.sparsity.monitor.ZeroCauseTracker``), ``untracked`` (zeroed before a resume),
    ``finalize`` (the method's finalize, e.g. a one-shot top-k), ``projection`` (the final top-k).
    ``epochs``: epochs the sparse phase and the fine-tune ran (a sparse phase that ends early, when
    a callback's ``stop_requested()`` says its selection is done, gives its remaining optimiser steps
    to the fine-tune, a partial epoch included: ``steps`` counts them, and sparse + fine-tune steps
    are the same for every method).
    """

    model: nn.Module
    groupset: GroupSet
    info: dict[str, Any]
    nonzero_before_projection: list[int]
    zeroed_by_projection: int
    zeroed_by: dict[str, list[int]]
    val_sparse: float | None
    val_projected: float | None
    val_final: float | None
    surgery: Any = None
    seconds: dict[str, float] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)


def masked_optimizer(model: nn.Module, groupset: GroupSet, lr: float, momentum: float,
                     weight_decay: float) -> ProxSGD:
    """SGD that keeps the zero groups of ``groupset`` at exactly zero (the fine-tune's optimiser).

    A ``ProxSGD`` with ``lam = 0`` and no half-space step: plain momentum SGD with ``weight_decay`` on
    every parameter, grouped or not (no penalty acts on the kept groups any more, so they need the same
    decay as any fine-tune: Torch-Pruning's fine-tune uses it on all), and every group that is zero now
    is frozen (its decay term is zero too).
    """
    k = groupset.nonzero_per_scope().clamp_min(1)
    opt = ProxSGD(model, groupset, k, ProxOptions(lr=lr, lam=0.0, momentum=momentum, weight_decay=weight_decay,
                                                   grouped_weight_decay=weight_decay, halfspace=False))
    opt.freeze_(torch.nonzero(~groupset.nonzero()).flatten())
    return opt


def sparsify(runner: PhaseRunner, model: nn.Module, groupset: GroupSet, k: Tensor, spec: SparsifySpec,
             ) -> SparsifyResult:
    """Sparse phase -> finalize -> top-k projection -> hooks -> [surgery -> hooks] -> masked fine-tune.

    Args:
        runner: the job's phase runner.
        model: the dense model (changed in place until the surgery; the fine-tune trains the compact copy).
        groupset: groups of ``model``.
        k: (S,) groups kept per scope.
        spec: the sequence.
    """
    import time

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    tracker = ZeroCauseTracker(groupset, spec.sparse.optimizer if spec.sparse else None, k=k,
                               start_now=not runner.ctx.resume)
    sparse_ran, sparse_steps = 0, 0
    if spec.sparse is not None:
        hist = runner.run(model, replace(spec.sparse, callbacks=(*spec.sparse.callbacks, tracker)))
        sparse_ran = epochs_run(hist, spec.sparse.epochs)
        sparse_steps = steps_run(hist) or runner.steps(sparse_ran)
    after_phase, phase_zeros = groupset.nonzero_per_scope(), tracker.per_scope()
    info = spec.finalize() if spec.finalize is not None else {}
    for hook in spec.hooks.before_projection:
        hook(model, runner)
    val_sparse = runner.val_accuracy(model)
    before = groupset.nonzero_per_scope()
    zeroed = int(project_to_k_(groupset, k).sum())
    zeroed_by = {**phase_zeros, "finalize": (after_phase - before).clamp_min(0).tolist(),
                 "projection": (before - groupset.nonzero_per_scope()).tolist()}
    for hook in spec.hooks.after_projection:
        hook(model, runner)
    val_projected = runner.val_accuracy(model)
    if spec.on_projected is not None:
        spec.on_projected(model)
    seconds["sparse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ft_model, ft_groups, record = model, groupset, None
    if spec.surgery is not None:
        ft_model, ft_groups, record = spec.surgery(model, groupset)
        for hook in spec.hooks.after_surgery:
            hook(ft_model, runner)
    seconds["surgery"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ft = spec.finetune
    if spec.sparse is not None:  # the steps a sparse phase did not need go to the fine-tune
        ft = _with_leftover_steps(ft, runner.steps(spec.sparse.epochs) - sparse_steps, runner.steps_per_epoch())
    ft_steps = ft.steps if ft.steps is not None else runner.steps(ft.epochs)
    if ft.epochs > 0:
        opt = masked_optimizer(ft_model, ft_groups, ft.lr, runner.ctx.momentum, runner.ctx.weight_decay)
        runner.run(ft_model, replace(ft, optimizer=opt, batch_loss=spec.finetune_batch_loss or ft.batch_loss,
                                     callbacks=(*ft.callbacks, GroupCountLogger(ft_groups))))
    seconds["finetune"] = time.perf_counter() - t0
    return SparsifyResult(model=ft_model, groupset=ft_groups, info=info, nonzero_before_projection=before.tolist(),
                          zeroed_by_projection=zeroed, zeroed_by=zeroed_by, val_sparse=val_sparse,
                          val_projected=val_projected, val_final=runner.val_accuracy(ft_model), surgery=record,
                          seconds=seconds, epochs={"sparse": sparse_ran, "finetune": ft.epochs},
                          steps={"sparse": sparse_steps, "finetune": ft_steps if ft.epochs > 0 else 0})


def _with_leftover_steps(ft: Phase, leftover: int, per_epoch: int) -> Phase:
    """``ft`` lengthened by ``leftover`` optimiser steps (a partial epoch included), or ``ft`` when none are left."""
    if leftover <= 0:
        return ft
    steps = ft.epochs * per_epoch + leftover
    return replace(ft, epochs=math.ceil(steps / per_epoch), steps=steps)


def steps_run(hist: TrainHistory) -> int:
    """Optimiser steps a phase took (resumed runs included): the last epoch record's global step, or 0."""
    return int(hist.records[-1]["step"]) if hist.records else 0


def epochs_run(hist: TrainHistory, planned: int) -> int:
    """Epochs a phase completed (resumed runs included): ``planned`` unless it stopped early."""
    if planned <= 0:
        return 0
    if hist.records:
        return int(hist.records[-1]["epoch"]) + 1
    return hist.resumed_from + 1 if hist.resumed_from is not None else 0
