"""A whole training job: dense phase -> method's sparse phase -> top-k projection -> masked fine-tune.

``run_train_job(cfg, run_dir)`` writes into ``run_dir`` (see docs/architecture.md):
``config.yaml``, ``profile.yaml``, ``train_log.jsonl``, ``groups.json``, ``dense.*``, ``sparse.*``,
checkpoints under ``checkpoints/<phase>/`` and ``metrics.json`` with ``accuracy`` (dense, sparse),
``scopes`` (``{name, total, k, nonzero}``), ``epochs`` and ``seconds``. With ``resume=True`` finished
phases are skipped (their saved models are loaded) and an interrupted phase continues from its last
epoch checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.base.files import atomic_write_json, atomic_write_text
from hwprune.data import load_dataset
from hwprune.groups import GroupSet, build_groups
from hwprune.models import create_model
from hwprune.profiles import HardwareProfile, load_profile, profile_to_dict
from hwprune.sparsity.methods import MethodConfig, get_method
from hwprune.sparsity.methods.wgsef_method import GroupCountLogger
from hwprune.sparsity.proxsgd import ProxSGD, project_to_k_, scope_report
from hwprune.surgery.modelio import load_model, save_model
from hwprune.training.config import TrainJobConfig
from hwprune.training.loop import evaluate, fit
from hwprune.training.schedule import TrainConfig

__all__ = ["run_train_job", "resolve_profile", "data_and_model", "load_job_data", "TrainJobResult"]

log = logging.getLogger(__name__)


@dataclass
class TrainJobResult:
    """In-memory result of a job (also written to ``metrics.json``)."""

    metrics: dict[str, Any]
    model: nn.Module
    groupset: GroupSet
    example_input: torch.Tensor
    profile: HardwareProfile


def _is_main() -> bool:
    """Rank 0 (or a single process): only it writes run-directory files under torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def load_job_data(cfg: TrainJobConfig) -> Any:
    """The job's ``DatasetBundle`` (same split for every step that re-loads it)."""
    return load_dataset(cfg.data, data_dir=Path(cfg.data_dir) if cfg.data_dir else None,
                        image_size=cfg.image_size, train_limit=cfg.train_limit, seed=cfg.seed)


def data_and_model(cfg: TrainJobConfig) -> tuple[Any, nn.Module, torch.Tensor]:
    """The job's dataset bundle, a freshly seeded model for it, and one example input (1, C, H, W)."""
    bundle = load_job_data(cfg)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                         input_size=bundle.image_size, **cfg.model_kwargs)
    return bundle, model, bundle.train[0][0].unsqueeze(0)


def resolve_profile(name: str) -> HardwareProfile:
    """Load a profile by bundled name or path; ``auto`` picks the best match for this machine."""
    if name == "auto":
        from hwprune.profiles.machine import best_profile

        return best_profile()
    return load_profile(name)


def _train_cfg(cfg: TrainJobConfig, epochs: int, lr: float, progress: bool | None,
               schedule: str = "cosine") -> TrainConfig:
    """TrainConfig of one phase.

    Cosine lr by default; a constant-lr sparse phase was measured and not adopted (on digits it
    oscillated without reaching k sooner).
    """
    return TrainConfig(epochs=max(1, epochs), batch_size=cfg.batch_size, lr=lr, momentum=cfg.momentum,
                       weight_decay=cfg.weight_decay, seed=cfg.seed, lr_schedule=schedule, device=cfg.device,
                       progress=progress)


def _dense_phase(cfg: TrainJobConfig, model: nn.Module, bundle: Any, run_dir: Path, resume: bool,
                 progress: bool | None) -> tuple[nn.Module, float]:
    t0 = time.perf_counter()
    if cfg.checkpoint:
        loaded, meta = load_model(Path(cfg.checkpoint))
        if meta["model"] != cfg.model or meta.get("plan"):
            raise ConfigError(f"--checkpoint {cfg.checkpoint}: expected an unpruned '{cfg.model}' model, "
                              f"got '{meta['model']}'{' (pruned)' if meta.get('plan') else ''}")
        model.load_state_dict(loaded.state_dict())
    elif resume and (run_dir / "dense.json").is_file():
        model.load_state_dict(load_model(run_dir / "dense")[0].state_dict())
    elif cfg.dense_epochs_resolved > 0:
        lr = cfg.dense_lr if cfg.dense_lr is not None else cfg.lr
        fit(model, bundle.train, None, _train_cfg(cfg, cfg.dense_epochs_resolved, lr, progress),
            eval_data=bundle.test, log_path=run_dir / "train_log.jsonl",
            checkpoint_dir=run_dir / "checkpoints" / "dense", resume=resume, phase="dense")
    if _is_main():
        save_model(model, run_dir / "dense", input_shape=tuple(bundle.train[0][0].shape), extra={"stage": "dense"})
    return model, time.perf_counter() - t0


def run_train_job(
    cfg: TrainJobConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    profile: HardwareProfile | None = None,
    k_override: torch.Tensor | None = None,
    latency_table: Mapping[str, Any] | None = None,
) -> TrainJobResult:
    """Run the job and return its result; every artifact is written atomically into ``run_dir``.

    ``k_override`` (S,) replaces ``gs.k_for_sparsity(cfg.sparsity)`` (e.g. from a latency budget);
    ``latency_table`` is passed to ``build_groups`` (``weight_mode="latency"``).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    profile = profile or resolve_profile(cfg.profile)
    method = get_method(cfg.method)  # fail early on an unknown method
    if _is_main():
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump({**cfg.to_dict(), "profile": profile.name},
                                                                  sort_keys=False))
    if _is_main():
        atomic_write_text(run_dir / "profile.yaml", yaml.safe_dump(profile_to_dict(profile), sort_keys=False))
    if not resume:
        (run_dir / "train_log.jsonl").unlink(missing_ok=True)
    seconds: dict[str, float] = {}
    bundle, model, example = data_and_model(cfg)
    model, seconds["dense"] = _dense_phase(cfg, model, bundle, run_dir, resume, progress)
    dense_eval = evaluate(model, bundle.test, batch_size=256)

    t0 = time.perf_counter()
    gs = build_groups(model, profile, example, phase="structured", latency_table=latency_table)
    k = gs.k_for_sparsity(cfg.sparsity) if k_override is None else torch.as_tensor(k_override, dtype=torch.long)
    if tuple(k.shape) != (gs.num_scopes,):
        raise ConfigError(f"k_override has shape {tuple(k.shape)}; this model has {gs.num_scopes} scopes")
    if _is_main():
        atomic_write_json(run_dir / "groups.json", gs.to_json())
    seconds["groups"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    lam = cfg.lam if cfg.lam is not None else method.default_lam
    mcfg = MethodConfig(lr=cfg.lr, lam=lam, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eps=cfg.eps,
                        hs_frac=cfg.hs_frac, **_method_options(cfg.method_options))
    info: dict[str, Any] = {}
    if method.trains and cfg.epochs > 0:
        steps = cfg.epochs * -(-len(bundle.train) // cfg.batch_size)
        phase = method.prepare(model, gs, k, mcfg, total_steps=steps)
        callbacks = list(phase.callbacks) or [GroupCountLogger(gs, phase.optimizer)]
        fit(model, bundle.train, phase.optimizer, _train_cfg(cfg, cfg.epochs, cfg.lr, progress),
            eval_data=bundle.test, extra_loss=phase.extra_loss, callbacks=callbacks,
            log_path=run_dir / "train_log.jsonl", checkpoint_dir=run_dir / "checkpoints" / "sparse",
            resume=resume, phase="sparse")
        info = method.finalize(model, gs, k, phase) or {}
    else:
        info = method.finalize(model, gs, k, None) or {}
    seconds["sparse"] = time.perf_counter() - t0
    before_projection = gs.nonzero_per_scope().tolist()
    projected = int(project_to_k_(gs, k).sum())
    sparse_eval_before_ft = evaluate(model, bundle.test, batch_size=256)

    t0 = time.perf_counter()
    # One-shot methods give their sparse-phase epochs to the fine-tune: same total epochs for every method.
    ft_epochs = cfg.finetune_epochs_resolved + (0 if method.trains else cfg.epochs)
    if ft_epochs > 0:
        ft_lr = cfg.finetune_lr if cfg.finetune_lr is not None else cfg.lr / 2
        opt = ProxSGD(model, gs, k, lr=ft_lr, lam=0.0, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                      halfspace=False)
        opt.freeze_(torch.nonzero(~gs.nonzero()).flatten())
        fit(model, bundle.train, opt, _train_cfg(cfg, ft_epochs, ft_lr, progress),
            eval_data=bundle.test, callbacks=[GroupCountLogger(gs, None)], log_path=run_dir / "train_log.jsonl",
            checkpoint_dir=run_dir / "checkpoints" / "finetune", resume=resume, phase="finetune")
    seconds["finetune"] = time.perf_counter() - t0
    sparse_eval = evaluate(model, bundle.test, batch_size=256)
    scopes = scope_report(gs, k)
    exact = all(s["nonzero"] == s["k"] for s in scopes)
    if not exact:
        bad = [s["name"] for s in scopes if s["nonzero"] != s["k"]]
        log.warning("scopes with nonzero != k (dead groups at the start?): %s", bad[:5])
    if _is_main():
        save_model(model, run_dir / "sparse", input_shape=tuple(example.shape[1:]), extra={"stage": "sparse"})
    metrics = {
        "model": cfg.model, "data": cfg.data, "profile": profile.name, "method": cfg.method,
        "sparsity": cfg.sparsity,
        "accuracy": {"dense": dense_eval["accuracy"], "sparse_before_finetune": sparse_eval_before_ft["accuracy"],
                     "sparse": sparse_eval["accuracy"]},
        "loss": {"dense": dense_eval["loss"], "sparse": sparse_eval["loss"]},
        "scopes": scopes, "exact_k": exact,
        "groups": {"total": gs.num_groups, "nonzero": int(gs.nonzero().sum()), "k": int(k.sum()),
                   "nonzero_before_projection": int(sum(before_projection)), "zeroed_by_projection": projected},
        "lam": lam,
        "method_info": info,
        "preprocessing": bundle.preprocessing,
        "epochs": {"dense": cfg.dense_epochs_resolved if not cfg.checkpoint else 0,
                   "sparse": cfg.epochs if method.trains else 0, "finetune": ft_epochs},
        "seconds": seconds,
    }
    if _is_main():
        atomic_write_json(run_dir / "metrics.json", metrics)
    return TrainJobResult(metrics=metrics, model=model, groupset=gs, example_input=example, profile=profile)


def _method_options(opts: dict[str, Any]) -> dict[str, Any]:
    allowed = {"rho", "inner_steps", "ssr_mode"}
    known = {k: v for k, v in opts.items() if k in allowed}
    extra = {k: v for k, v in opts.items() if k not in allowed}
    return {**known, "extra": extra}
