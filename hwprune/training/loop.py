"""Generic, optimiser-agnostic training loop: ``fit`` / ``train_one_epoch`` / ``evaluate``.

``fit`` takes any ``torch.optim.Optimizer`` (ProxSGD applies its prox inside ``step()``), an
optional per-step LR scheduler, an ``extra_loss(model)`` penalty and callbacks, and writes one
JSON object per epoch to a JSON-lines log. Epochs are 0-based everywhere (log, checkpoints,
callbacks). Determinism: every epoch re-seeds python/numpy/torch RNGs and the shuffle generator
from ``(seed, epoch, rank)``, so a run resumed from ``checkpoint_dir/last.pt`` ends with exactly
the weights of an uninterrupted run. Under ``torchrun`` the model is wrapped in DDP (see
``hwprune.training.distributed``) and only rank 0 writes files.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from hwprune.base.errors import ConfigError
from hwprune.training import distributed as ddp
from hwprune.training.callbacks import callback_states, load_callback_states, stop_requested
from hwprune.training.checkpoint import (
    append_log_record,
    capture_rng_state,
    resume_from,
    save_checkpoint,
    to_plain,
    trim_log,
)
from hwprune.training.schedule import (
    NonFiniteLossError,
    TrainConfig,
    TrainHistory,
    epoch_seed,
    make_scheduler,
    seed_everything,
)

__all__ = ["evaluate", "train_one_epoch", "fit", "format_epoch"]

_LOG = logging.getLogger(__name__)
LossFn = Callable[[Tensor, Tensor], Tensor]
BatchLoss = Callable[[Any, Tensor, Any], Tensor]  # (inputs, outputs, labels) -> scalar, e.g. distillation
Data = DataLoader[Any] | Dataset[Any]
CHECKPOINT_NAME = "last.pt"


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _batch_size(y: Any) -> int:
    return int(y.shape[0]) if isinstance(y, Tensor) else len(y)


def _num_correct(out: Any, y: Any) -> float:
    """Top-1 hits for (N, C) logits and (N,) integer labels; NaN when not a classification batch."""
    classify = isinstance(out, Tensor) and isinstance(y, Tensor) and out.ndim == 2 and y.ndim == 1
    if classify and not y.is_floating_point():
        return float((out.argmax(dim=1) == y).sum())
    return math.nan


def _resolve_device(kind: str) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but CUDA is not available; use device='cpu' or 'auto'")
        return torch.device("cuda", ddp.env_info().local_rank)
    return torch.device("cpu")


def _train_loader(data: Data, cfg: TrainConfig, generator: torch.Generator) -> DataLoader[Any]:
    """The given loader, or a shuffling one over a dataset (DistributedSampler under DDP)."""
    if isinstance(data, DataLoader):
        if not ddp.is_distributed() or isinstance(data.sampler, DistributedSampler):
            return data
        _LOG.warning("rebuilding the train DataLoader with a DistributedSampler for DDP")
        batch_size, workers, collate = data.batch_size or cfg.batch_size, data.num_workers, data.collate_fn
        data = data.dataset
    else:
        batch_size, workers, collate = cfg.batch_size, cfg.num_workers, None
    sampler: DistributedSampler[Any] | None = (
        DistributedSampler(data, shuffle=True, seed=cfg.seed) if ddp.is_distributed() else None)
    return DataLoader(
        data, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, num_workers=workers,
        collate_fn=collate, generator=generator,
    )


def _eval_loader(data: Data, batch_size: int) -> DataLoader[Any]:
    """Given loader, or a sequential one over this rank's strided shard (no padding duplicates)."""
    if isinstance(data, DataLoader):
        return data
    if ddp.is_distributed():
        data = Subset(data, range(ddp.get_rank(), len(data), ddp.get_world_size()))  # type: ignore[arg-type]
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def evaluate(
    model: nn.Module,
    data: Data,
    *,
    batch_size: int = 256,
    loss_fn: LossFn | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Mean loss and top-1 accuracy (fraction in [0, 1]; NaN if not classification) over ``data``.

    Under DDP each rank evaluates its shard and the sums are all-reduced. Restores train mode.
    """
    net = ddp.unwrap(model)
    loss_fn = loss_fn or F.cross_entropy
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss_sum, correct, count
    with torch.no_grad():
        for x, y in _eval_loader(data, batch_size):
            x, y = _to_device(x, dev), _to_device(y, dev)
            out = net(x)
            n = _batch_size(y)
            sums += torch.tensor([float(loss_fn(out, y)) * n, _num_correct(out, y), n], dtype=torch.float64)
    net.train(was_training)
    sums = ddp.all_reduce_sum(sums.to(dev)).cpu()
    count = max(sums[2].item(), 1.0)
    return {"loss": sums[0].item() / count, "accuracy": sums[1].item() / count}


def format_epoch(record: Mapping[str, Any], epochs: int) -> str:
    """The console line of one epoch record: phase, epoch (1-based) / epochs, loss, accuracies, groups, seconds.

    ``groups N/K`` is the record's ``nonzero_groups`` and, in a sparse phase, ``k_groups`` (the budget).
    """
    def num(key: str) -> float | None:
        v = record.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None

    parts = [f"{record.get('phase', 'train'):<11} epoch {int(record.get('epoch', 0)) + 1:>3}/{epochs:<3}"]
    for key, label in (("train_loss", "loss"), ("train_acc", "acc"), ("val_loss", "val_loss"), ("val_acc", "val_acc"),
                       ("eval_acc", "eval_acc")):
        v = num(key)
        if v is not None:
            parts.append(f"{label} {v:.4f}")
    if record.get("nonzero_groups") is not None:
        k = record.get("k_groups")
        parts.append(f"nonzero groups {record['nonzero_groups']}" + (f" / k {k}" if k is not None else ""))
    secs = num("seconds")
    if secs is not None:
        parts.append(f"{secs:.1f} s")
    return "  ".join(parts)


def _check_finite(total: Tensor, phase: str, epoch: int, step: int) -> None:
    """Raise NonFiniteLossError on NaN/Inf (agreed across DDP ranks, so no rank hangs)."""
    bad = (~torch.isfinite(total.detach())).to(torch.float32).reshape(1)
    if ddp.all_reduce_sum(bad).item() > 0:
        raise NonFiniteLossError(phase, epoch, step, float(total.detach()))


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    *,
    epoch: int,
    scheduler: Any | None = None,
    extra_loss: Callable[[nn.Module], Tensor] | None = None,
    batch_loss: BatchLoss | None = None,
    callbacks: Sequence[Any] = (),
    loss_fn: LossFn | None = None,
    device: torch.device | None = None,
    phase: str = "train",
    start_step: int = 0,
    show_progress: bool = False,
) -> dict[str, float]:
    """One pass over ``loader``: forward, loss (+ ``extra_loss`` + ``batch_loss``), backward, clip, step, sched step.

    Returns sample-weighted means ``train_loss`` (task loss), ``penalty`` (the added terms; NaN without),
    ``train_acc`` and the global step count ``step`` after the epoch (all-reduced under DDP). The
    keyword parameters are ``fit``'s, passed through for one epoch (``fit`` documents them).
    """
    loss_fn = loss_fn or F.cross_entropy
    dev = device or next(ddp.unwrap(model).parameters()).device
    model.train()
    sums = torch.zeros(4, dtype=torch.float64)  # loss_sum, penalty_sum, correct, count
    step = start_step
    bar = tqdm(loader, desc=f"{phase} {epoch}", disable=not show_progress, leave=False, dynamic_ncols=True)
    for x, y in bar:
        x, y = _to_device(x, dev), _to_device(y, dev)
        out = model(x)
        loss = loss_fn(out, y)
        penalty = extra_loss(ddp.unwrap(model)) if extra_loss is not None else None
        if batch_loss is not None:
            term = batch_loss(x, out, y)
            penalty = term if penalty is None else penalty + term
        total = loss + penalty if penalty is not None else loss
        _check_finite(total, phase, epoch, step)
        optimizer.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = _batch_size(y)
        pen = float(penalty.detach()) * n if penalty is not None else math.nan
        sums += torch.tensor([float(loss.detach()) * n, pen, _num_correct(out, y), n], dtype=torch.float64)
        for cb in callbacks:
            if hasattr(cb, "on_step_end"):
                cb.on_step_end(step, epoch)
        step += 1
        if cfg.log_every and (step - start_step) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{sums[0].item() / sums[3].item():.4f}", refresh=False)
        if stop_requested(callbacks):  # e.g. a sparse phase whose selection is finished: end the epoch here
            break
        if cfg.max_steps is not None and step >= cfg.max_steps:  # the step budget ends inside this epoch
            break
    sums = ddp.all_reduce_sum(sums.to(dev)).cpu()
    count = max(sums[3].item(), 1.0)
    return {
        "train_loss": sums[0].item() / count,
        "penalty": sums[1].item() / count,
        "train_acc": sums[2].item() / count,
        "step": float(step),
    }


@dataclass
class _FitState:
    """What one ``fit`` call sets up before its first epoch (kept together to keep ``fit`` short)."""

    net: nn.Module
    loader: DataLoader[Any]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    history: TrainHistory
    start_epoch: int
    callback_state: dict[str, Any]
    log_file: Path | None
    ckpt: Path | None
    main: bool
    show: bool


def _start(model: nn.Module, train_data: Data, optimizer: torch.optim.Optimizer | None, cfg: TrainConfig,
           scheduler: Any | None, device: torch.device, log_path: str | Path | None,
           checkpoint_dir: str | Path | None, resume: bool, phase: str) -> _FitState:
    """Seed, move and wrap the model, build the loader/optimiser/scheduler, restore a checkpoint.

    Ten parameters: they are ``fit``'s own, passed through once (``fit`` documents each).
    """
    ddp.setup_distributed(device)
    rank, main = ddp.get_rank(), ddp.is_main_process()
    generator = seed_everything(epoch_seed(cfg.seed, 0, rank))
    model.to(device)
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loader = _train_loader(train_data, cfg, generator)
    scheduler = scheduler if scheduler is not None else make_scheduler(optimizer, cfg, len(loader))
    log_file = Path(log_path) if log_path is not None else None
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    history = TrainHistory(phase=phase)
    start_epoch, cb_state = 0, dict[str, Any]()
    if resume and ckpt is not None:
        start_epoch, history.records, cb_state = resume_from(ckpt, model=model, optimizer=optimizer,
                                                             scheduler=scheduler, phase=phase, map_location=device)
        history.resumed_from = start_epoch - 1 if start_epoch > 0 else None
        if main and log_file is not None and start_epoch > 0:
            trim_log(log_file, phase, start_epoch - 1)
    show = main and (cfg.progress if cfg.progress is not None else sys.stderr.isatty())
    return _FitState(ddp.wrap_model(model, device), loader, optimizer, scheduler, generator, history, start_epoch,
                     cb_state, log_file, ckpt, main, show)


def _seed_epoch(st: _FitState, seed: int, epoch: int) -> None:
    """Re-seed every RNG and the shuffle order from ``(seed, epoch, rank)`` (what makes resume exact)."""
    seed_e = epoch_seed(seed, epoch, ddp.get_rank())
    seed_everything(seed_e)
    for gen in {id(g): g for g in (st.generator, st.loader.generator) if g is not None}.values():
        gen.manual_seed(seed_e)  # ours and, if different, a caller's loader generator
    if isinstance(st.loader.sampler, DistributedSampler):
        st.loader.sampler.set_epoch(epoch)


def _save_epoch(st: _FitState, record: dict[str, Any], epoch: int, cfg: TrainConfig, phase: str,
                callbacks: Sequence[Any]) -> None:
    """Append the epoch record to the log and write the checkpoint (main process only), then sync."""
    if st.main and st.log_file is not None:
        append_log_record(st.log_file, record)
    if st.main and st.ckpt is not None:
        save_checkpoint(st.ckpt, model=st.net, optimizer=st.optimizer, scheduler=st.scheduler, epoch=epoch,
                        rng_state=capture_rng_state(),
                        extra={"phase": phase, "seed": cfg.seed, "world_size": ddp.get_world_size(),
                               "history": st.history.records, "callbacks": callback_states(callbacks)})
    ddp.barrier()


def fit(
    model: nn.Module,
    train_data: Data,
    optimizer: torch.optim.Optimizer | None,
    cfg: TrainConfig,
    *,
    scheduler: Any | None = None,
    eval_data: Data | None = None,
    eval_name: str = "eval",
    extra_loss: Callable[[nn.Module], Tensor] | None = None,
    batch_loss: BatchLoss | None = None,
    callbacks: Sequence[Any] = (),
    log_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    phase: str = "train",
    metrics_fn: Callable[[int, dict[str, Any]], Mapping[str, Any] | None] | None = None,
    loss_fn: LossFn | None = None,
) -> TrainHistory:
    """Train ``model`` in place for ``cfg.epochs`` epochs (at most ``cfg.max_steps`` steps) and return the history.

    The keyword parameters are independent, optional extension points with neutral defaults (the
    engine in ``hwprune.training.phases`` fills them from one phase description).

    Args:
        model: the network (trained in place; may be DDP-wrapped).
        train_data: a DataLoader, or a Dataset yielding (input, label) shuffled with cfg's seed.
        cfg: epochs, batch size, schedule, seed and device.
        optimizer: any optimiser over the model's parameters; None builds SGD from cfg.
        scheduler: stepped once per optimiser step; None builds ``make_scheduler(...)``.
        eval_data: evaluated after every epoch (accuracy and loss in the record); None: no evaluation.
        eval_name: prefix of those record keys: ``{eval_name}_acc``, ``{eval_name}_loss`` (the job
            evaluates its validation split: ``val``).
        extra_loss: ``extra_loss(model) -> scalar`` added to the loss (the unwrapped model).
        batch_loss: ``batch_loss(inputs, outputs, labels) -> scalar`` added to the loss (a term that
            needs the batch, e.g. distillation from a teacher's outputs on ``inputs``); the record's
            ``penalty`` is the mean of both added terms.
        callbacks: objects with optional ``on_step_end(step, epoch)`` (global 0-based step),
            ``on_epoch_end(epoch, record) -> dict | None`` (fields merged into the record) and
            ``stop_requested()`` and ``state_dict()`` / ``load_state_dict()`` (``hwprune.training.callbacks``).
        metrics_fn: ``metrics_fn(epoch, record) -> dict | None``, merged like a callback's.
        log_path: JSON-lines log, one record per epoch, appended and flushed per line.
        checkpoint_dir: ``last.pt`` is written there (atomically) after every epoch.
        resume: continue from ``checkpoint_dir/last.pt`` if it exists and has the same ``phase``.
        phase: name of this phase in the log and the checkpoint (``dense``, ``sparse``, ...).
        loss_fn: ``loss_fn(logits, labels) -> scalar``; None: cross-entropy.

    Raises:
        NonFiniteLossError: NaN/Inf loss; the last checkpoint stays as it was.
    """
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs a checkpoint_dir")  # nothing to resume from
    device = _resolve_device(cfg.device)
    st = _start(model, train_data, optimizer, cfg, scheduler, device, log_path, checkpoint_dir, resume, phase)
    load_callback_states(callbacks, st.callback_state)
    step = st.start_epoch * len(st.loader)
    hooks = [cb.on_epoch_end for cb in callbacks if hasattr(cb, "on_epoch_end")]
    hooks += [metrics_fn] if metrics_fn is not None else []
    for epoch in range(st.start_epoch, cfg.epochs):
        if stop_requested(callbacks) or (cfg.max_steps is not None and step >= cfg.max_steps):
            break
        _seed_epoch(st, cfg.seed, epoch)
        t0 = time.perf_counter()
        lr = float(st.optimizer.param_groups[0]["lr"])
        stats = train_one_epoch(st.net, st.loader, st.optimizer, cfg, epoch=epoch, scheduler=st.scheduler,
                                extra_loss=extra_loss, batch_loss=batch_loss, callbacks=callbacks,
                                loss_fn=loss_fn, device=device,
                                phase=phase, start_step=step, show_progress=st.show)
        step = int(stats.pop("step"))
        ddp.broadcast_buffers(st.net)
        stats = {k: v for k, v in stats.items() if k != "penalty" or extra_loss is not None or batch_loss is not None}
        record: dict[str, Any] = {"phase": phase, "epoch": epoch, "step": step, "lr": lr, **stats}
        if eval_data is not None:
            ev = evaluate(st.net, eval_data, batch_size=cfg.batch_size, loss_fn=loss_fn, device=device)
            record.update({f"{eval_name}_loss": ev["loss"], f"{eval_name}_acc": ev["accuracy"]})
        record["seconds"] = time.perf_counter() - t0
        for hook in hooks:
            record.update(hook(epoch, dict(record)) or {})
        record = to_plain(record)
        st.history.records.append(record)
        if st.main:
            _LOG.info("%s", format_epoch(record, cfg.epochs))
        _save_epoch(st, record, epoch, cfg, phase, callbacks)
    return st.history
