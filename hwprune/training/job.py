"""A whole training job: dense phase -> method's sparse phase -> top-k projection -> surgery -> fine-tune.

``run_train_job(cfg, run_dir)`` writes through a :class:`~hwprune.training.rundir.RunDir`:
``config.yaml``, ``profile.yaml``, ``example_input.safetensors``, ``train_log.jsonl``,
``groups.json``, ``dense.*``, ``sparse.*`` (the masked model right after the projection),
``surgery_plan.json`` + ``prune_summary.json`` (surgery with its equivalence check), ``pruned.*``
(the compact model after its fine-tune), checkpoints under ``checkpoints/<phase>/`` and
``metrics.json`` (:class:`~hwprune.training.artifacts.TrainMetrics`). With
``compact_finetune: false`` the fine-tune trains the masked model, saved as ``sparse.*``, and
``hwprune prune`` does the surgery. The phases run through :mod:`hwprune.training.phases`.
With ``resume=True`` finished phases are skipped (their saved models or checkpoints are loaded)
and an interrupted phase continues from its last epoch checkpoint.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.base.optional import add_import_path
from hwprune.data import DatasetBundle
from hwprune.groups import build_groups
from hwprune.groups.groupset import GroupSet
from hwprune.models import create_model
from hwprune.profiles import HardwareProfile, load_profile
from hwprune.sparsity.methods import MethodConfig, MethodOptions, SparseMethod, SparsePhase, get_method
from hwprune.sparsity.monitor import GroupCountLogger
from hwprune.sparsity.selection import scope_report
from hwprune.training.artifacts import ByStage, GroupCounts, ScopeCount, SplitSizes, TrainMetrics
from hwprune.training.bnrecal import bn_recalibration_hook
from hwprune.training.compact import alignment_warnings, compact_run_model, surgery_groups
from hwprune.training.config import TrainJobConfig
from hwprune.training.distill import DistillTerm
from hwprune.training.loop import evaluate
from hwprune.training.phases import EVAL_BATCH, Hooks, Phase, PhaseContext, PhaseRunner, SparsifySpec, sparsify
from hwprune.training.runconfig import PipelineOptions, RunConfig
from hwprune.training.rundir import RunDir, load_job_data

__all__ = ["run_train_job", "resolve_profile", "check_job", "data_and_model", "load_job_data", "build_job_model",
           "TrainJobResult"]

log = logging.getLogger(__name__)


@dataclass
class TrainJobResult:
    """In-memory result of a job (``metrics`` is also ``metrics.json``).

    ``model`` is the final model (compact unless ``compact_finetune`` is off), ``groupset`` the
    groups of the trained, masked model (what ``metrics.scopes`` counts).
    """

    metrics: TrainMetrics
    model: nn.Module
    groupset: GroupSet
    example_input: torch.Tensor
    profile: HardwareProfile
    rundir: RunDir


def resolve_profile(name: str) -> HardwareProfile:
    """Load a profile by bundled name or path; ``auto`` picks the best match for this machine."""
    if name == "auto":
        from hwprune.profiles.machine import best_profile

        return best_profile()
    return load_profile(name)


def check_job(cfg: TrainJobConfig) -> HardwareProfile:
    """The job's resolved profile, after checking its method and method options (no data loaded, nothing written).

    Raises:
        ConfigError: unknown profile, method or method option.
    """
    profile = resolve_profile(cfg.profile)
    get_method(cfg.method).parse_options(cfg.method_options)
    return profile


def build_job_model(cfg: TrainJobConfig, bundle: DatasetBundle) -> nn.Module:
    """A freshly initialised model for the job (seeded with ``cfg.seed``; ``cfg.model_path`` on the import path)."""
    add_import_path(cfg.model_path)
    torch.manual_seed(cfg.seed)
    return create_model(cfg.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                        input_size=bundle.image_size, **cfg.model_kwargs)


def data_and_model(cfg: TrainJobConfig) -> tuple[DatasetBundle, nn.Module, torch.Tensor]:
    """The job's dataset, a freshly seeded model for it, and one example input (1, C, H, W).

    The example is the first training image, as ``RunDir.example_input()`` of the job's run will be.
    """
    bundle = load_job_data(cfg)
    return bundle, build_job_model(cfg, bundle), bundle.train[0][0].unsqueeze(0)


def _context(cfg: TrainJobConfig, bundle: DatasetBundle, rd: RunDir, resume: bool,
             progress: bool | None) -> PhaseContext:
    return PhaseContext(train_data=bundle.train, val_data=bundle.val, batch_size=cfg.batch_size,
                        momentum=cfg.momentum, weight_decay=cfg.weight_decay, seed=cfg.seed, device=cfg.device,
                        progress=progress, log_path=rd.log_path, checkpoint_root=rd.checkpoints_root,
                        resume=resume)


def _load_start_model(cfg: TrainJobConfig, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The state of ``cfg.checkpoint`` (a saved dense model of the same architecture), or None.

    Raises:
        ConfigError: the checkpoint is another model, pruned, or does not fit ``model``.
        DataError: the files are missing or corrupt (``modelio.load_model``).
    """
    if not cfg.checkpoint:
        return None
    from hwprune.surgery.modelio import load_model

    loaded, meta = load_model(Path(cfg.checkpoint))
    if meta["model"] != cfg.model or meta.get("plan"):
        raise ConfigError(f"--checkpoint {cfg.checkpoint}: expected an unpruned '{cfg.model}' model, "
                          f"got '{meta['model']}'{' (pruned)' if meta.get('plan') else ''}")
    state = loaded.state_dict()
    mine = model.state_dict()
    bad = [k for k, v in state.items() if k not in mine or mine[k].shape != v.shape]
    if bad or set(mine) != set(state):
        raise ConfigError(f"--checkpoint {cfg.checkpoint}: its tensors do not fit this job's '{cfg.model}' "
                          f"(built for another dataset shape? e.g. {(bad or sorted(set(mine) ^ set(state)))[0]})")
    return state


def _check_resumable(rd: RunDir, cfg: TrainJobConfig, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Before a resumed job writes anything: every phase checkpoint must load; returns the saved dense state.

    Raises:
        DataError: a checkpoint or the saved dense model is missing parts, truncated or corrupt (one line).
    """
    from hwprune.training.checkpoint import load_checkpoint

    for ckpt in sorted(rd.checkpoints_root.glob("*/last.pt")) if rd.checkpoints_root.is_dir() else []:
        load_checkpoint(ckpt, model=None)
    if not rd.has_model("dense"):
        return None
    state = rd.load_model("dense")[0].state_dict()
    if set(state) != set(model.state_dict()):
        raise ConfigError(f"{rd.root}: its dense model is not this job's '{cfg.model}'; start a new run")
    return state


def _dense_phase(cfg: TrainJobConfig, model: nn.Module, runner: PhaseRunner, rd: RunDir,
                 start: dict[str, torch.Tensor] | None) -> None:
    """Train (or load ``start``: the ``--checkpoint`` state or a resumed run's dense model); save it as ``dense.*``."""
    if start is not None:  # --checkpoint, or the dense model of a resumed run
        model.load_state_dict(start)
    else:
        lr = cfg.dense_lr if cfg.dense_lr is not None else cfg.lr
        runner.run(model, Phase("dense", cfg.dense_epochs_resolved, lr))
    rd.save_model(model, "dense")


def _sparsify_spec(cfg: TrainJobConfig, method: SparseMethod, options: MethodOptions, lam: float, model: nn.Module,
                   gs: GroupSet, k: torch.Tensor, runner: PhaseRunner, rd: RunDir) -> SparsifySpec:
    """The job's sequence: the method's phase, its finalize, surgery (compact_finetune), the fine-tune.

    Nine parameters: the job's pieces built so far; bundling them would only name the same list.
    """
    phase: SparsePhase | None = None
    sparse = None
    if method.trains:
        mcfg = MethodConfig(lr=cfg.lr, lam=lam, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                            options=options)
        phase = method.prepare(model, gs, k, mcfg, total_steps=runner.steps(cfg.epochs))
        callbacks = tuple(phase.callbacks) or (GroupCountLogger(gs, phase.optimizer),)
        sparse = Phase("sparse", cfg.epochs, cfg.lr, optimizer=phase.optimizer, extra_loss=phase.extra_loss,
                       callbacks=callbacks)
    # One-shot methods give their sparse-phase epochs to the fine-tune: same total epochs for every method.
    ft_epochs = cfg.finetune_epochs_resolved + (0 if method.trains else cfg.epochs)
    ft_lr = cfg.finetune_lr if cfg.finetune_lr is not None else cfg.lr / 2

    def surgery(masked: nn.Module, groups: GroupSet) -> tuple[nn.Module, GroupSet, Any]:
        compact, plan, _ = compact_run_model(masked, groups, rd, val_accuracy=runner.val_accuracy,
                                             after_finetune=False)
        return compact, surgery_groups(compact, rd.profile, rd, what="compact model"), plan

    return SparsifySpec(
        sparse=sparse, finetune=Phase("finetune", ft_epochs, ft_lr),
        surgery=surgery if cfg.compact_finetune else None,
        finalize=lambda: method.finalize(model, gs, k, phase) or {},
        on_projected=(lambda m: rd.save_model(m, "sparse")) if cfg.compact_finetune else None)


def _budget(gs: GroupSet, sparsity: float, k_override: torch.Tensor | None) -> torch.Tensor:
    k = gs.k_for_sparsity(sparsity) if k_override is None else torch.as_tensor(k_override, dtype=torch.long)
    if tuple(k.shape) != (gs.num_scopes,):
        raise ConfigError(f"k_override has shape {tuple(k.shape)}; this model has {gs.num_scopes} scopes")
    return k


def _rewind_hook(dense: nn.Module, gs: GroupSet) -> Any:
    """After the projection: the dense model's weights with the selected groups' zeros (the mask is kept)."""
    state = {k: v.clone() for k, v in dense.state_dict().items()}

    def hook(model: nn.Module, runner: PhaseRunner) -> None:
        dropped = torch.nonzero(~gs.nonzero()).flatten()
        model.load_state_dict(state)
        gs.zero_(dropped)

    return hook


def _recipe(cfg: TrainJobConfig) -> dict[str, Any]:
    """The method-independent recipe steps of the job, as ``metrics.json`` records them."""
    out: dict[str, Any] = {"bn_recalibrate": cfg.bn_recalibrate, "distill": cfg.distill, "block_order": cfg.block_order}
    if cfg.distill:
        out.update(distill_alpha=cfg.distill_alpha, distill_temperature=cfg.distill_temperature)
    return out


def run_train_job(
    cfg: TrainJobConfig,
    run_dir: Path | RunDir,
    *,
    resume: bool = False,
    progress: bool | None = None,
    profile: HardwareProfile | None = None,
    k_override: torch.Tensor | None = None,
    latency_table: Mapping[str, Any] | None = None,
    opts: PipelineOptions | None = None,
) -> TrainJobResult:
    """Run the job and return its result; every artifact is written atomically into ``run_dir``.

    Args:
        cfg: the job.
        run_dir: its directory (a path, or the RunDir of an ``hwprune run``).
        resume: continue a killed run from its checkpoints.
        progress: progress bars (None: only on a terminal).
        profile: the resolved profile (None: ``cfg.profile``, ``auto`` = this machine's best match).
        k_override: (S,) groups kept per scope instead of ``gs.k_for_sparsity(cfg.sparsity)`` (a
            latency budget).
        latency_table: passed to ``build_groups`` (``weight_mode="latency"``).
        opts: the later steps' options, recorded in ``config.yaml`` (None: the defaults).

    Long (~95 lines) because it is the job's sequence, each step one call, kept in one place on purpose.
    """
    # Everything that can be wrong with the job is checked before the run directory is touched.
    profile = profile or resolve_profile(cfg.profile)
    method = get_method(cfg.method)  # fail early on an unknown method or option
    options = method.parse_options(cfg.method_options)
    root = run_dir.root if isinstance(run_dir, RunDir) else Path(run_dir)
    cfg = cfg.portable().replace(profile=profile.name)
    bundle = load_job_data(cfg)
    model = build_job_model(cfg, bundle)
    start = _load_start_model(cfg, model)
    # the profile must group this model (and k_override fit it) before anything is trained or written
    _budget(build_groups(model, profile, bundle.train[0][0].unsqueeze(0), phase="structured",
                         latency_table=latency_table), cfg.sparsity, k_override)
    if resume:
        start = _check_resumable(RunDir(root), cfg, model) if start is None else start
    rd = RunDir.create(root, RunConfig(train=cfg, profile=profile.name, pipeline=opts or PipelineOptions()),
                       profile, fresh=not resume)
    rd.use_data(bundle)
    rd.write_example(bundle.train.tensors[0])
    runner = PhaseRunner(_context(cfg, bundle, rd, resume, progress))
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    _dense_phase(cfg, model, runner, rd, start)
    seconds["dense"] = time.perf_counter() - t0
    dense = copy.deepcopy(model)  # tested once, at the end, with the final model
    val_dense = runner.val_accuracy(model)

    t0 = time.perf_counter()
    gs = build_groups(model, profile, rd.example_input(), phase="structured", latency_table=latency_table,
                      block_order=cfg.block_order)  # "norm": blocks of channels of similar magnitude (recipe.md)
    k = _budget(gs, cfg.sparsity, k_override)
    rd.write_groups(gs)
    for warning in alignment_warnings(gs.summary(), [], profile.alignment):
        log.warning("%s", warning)
    seconds["groups"] = time.perf_counter() - t0
    lam = cfg.lam if cfg.lam is not None else method.default_lam
    spec = _sparsify_spec(cfg, method, options, lam, model, gs, k, runner, rd)
    # The recipe steps every method gets (issue 11): BatchNorm statistics re-estimated after the
    # projection; optionally a distillation term from the dense model in the fine-tune.
    recal = [bn_recalibration_hook()] if cfg.bn_recalibrate else []
    after: list[Any] = [_rewind_hook(dense, gs)] if cfg.rewind else []
    spec = replace(spec, hooks=Hooks(before_projection=recal, after_projection=after + recal),
                   finetune_batch_loss=DistillTerm(copy.deepcopy(dense), alpha=cfg.distill_alpha,
                                                   temperature=cfg.distill_temperature) if cfg.distill else None)
    res = sparsify(runner, model, gs, k, spec)
    seconds.update(res.seconds)
    scopes = [ScopeCount(**s, zeroed_by={c: n[i] for c, n in res.zeroed_by.items() if n[i]})
              for i, s in enumerate(scope_report(gs, k))]
    exact = all(s.nonzero == s.k for s in scopes)
    if not exact:
        log.warning("scopes with nonzero != k (dead groups at the start?): %s",
                    [s.name for s in scopes if s.nonzero != s.k][:5])
    final_stage = "pruned" if cfg.compact_finetune else "sparse"
    rd.save_model(res.model, final_stage, plan=res.surgery.to_dict() if res.surgery is not None else None)
    test_dense, test_final = (evaluate(m, bundle.test, batch_size=EVAL_BATCH) for m in (dense, res.model))
    metrics = TrainMetrics(
        model=cfg.model, data=cfg.data, profile=profile.name, method=cfg.method, sparsity=cfg.sparsity,
        final_stage=final_stage,
        test_accuracy=ByStage(dense=test_dense["accuracy"], final=test_final["accuracy"]),
        val_accuracy=ByStage(dense=val_dense, sparse=res.val_sparse, projected=res.val_projected, final=res.val_final),
        test_loss=ByStage(dense=test_dense["loss"], final=test_final["loss"]),
        scopes=scopes, exact_k=exact,
        groups=GroupCounts(total=gs.num_groups, nonzero=int(gs.nonzero().sum()), k=int(k.sum()),
                           nonzero_before_projection=int(sum(res.nonzero_before_projection)),
                           zeroed_by_projection=res.zeroed_by_projection,
                           zeroed_by={c: int(sum(n)) for c, n in res.zeroed_by.items() if sum(n)}),
        lam=lam, splits=SplitSizes(**bundle.split_sizes, data_seed=cfg.data_seed, val_fraction=cfg.val_fraction),
        epochs={"dense": cfg.dense_epochs_resolved if not cfg.checkpoint else 0, **res.epochs},
        seconds=seconds, method_options=options.to_dict(), method_info=res.info,
        preprocessing=bundle.preprocessing, budget="sparsity" if k_override is None else "k_per_scope",
        recipe=_recipe(cfg), steps=res.steps)
    rd.write_metrics(metrics)
    return TrainJobResult(metrics=metrics, model=res.model, groupset=gs, example_input=rd.example_input(),
                          profile=profile, rundir=rd)
