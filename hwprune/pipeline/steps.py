"""``hwprune run``: train -> surgery -> (N:M) -> export -> bench -> report, one step per function.

Every step reads only earlier artifacts in ``RUN_DIR`` (docs/architecture.md), so any step can be
re-run alone (``hwprune prune RUN_DIR``, ``hwprune export RUN_DIR``, ...). ``run`` composes them and
records the wall time per step. ``sweep`` runs several sparsities, re-using the first point's dense
model, and draws the Pareto chart. No algorithm lives here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from hwprune.base.errors import ConfigError, DataError, MissingBackendError
from hwprune.base.files import atomic_write_json
from hwprune.profiles import BenchSpec, HardwareProfile, load_profile
from hwprune.surgery.modelio import load_model, load_run_model, save_model
from hwprune.training.config import TrainJobConfig, load_run_config

__all__ = ["PipelineOptions", "run", "sweep", "step_train", "step_prune", "step_nm", "step_export", "step_bench",
           "step_report", "run_profile"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineOptions:
    """Options of the non-training steps.

    Attributes:
        nm_epochs: epochs of the N:M phase (sparse + masked fine-tune each) when the profile has nm rules.
        nm_lam: lambda of the batched SEF prox in the N:M phase.
        bench_batch_sizes: override the profile's batch sizes.
        bench_iters / bench_warmup / bench_repeats: override the profile's timing settings.
        bench_fallback: time on ONNX Runtime CPU when the profile's backend is not installed here.
    """

    nm_epochs: int = 2
    nm_lam: float = 0.05
    bench_batch_sizes: tuple[int, ...] | None = None
    bench_iters: int | None = None
    bench_warmup: int | None = None
    bench_repeats: int | None = None
    bench_fallback: bool = True


def run_profile(run_dir: Path) -> HardwareProfile:
    """The resolved profile a run was trained with (``RUN_DIR/profile.yaml``)."""
    path = Path(run_dir) / "profile.yaml"
    if not path.is_file():
        raise DataError(f"{path}: missing (run 'hwprune train' or 'hwprune run' first)")
    return load_profile(path)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: missing (run the earlier pipeline step first)")
    return json.loads(path.read_text())


def _test_batch(run_dir: Path, n: int = 64) -> tuple[Any, torch.Tensor]:
    from hwprune.training.job import load_job_data

    bundle = load_job_data(load_run_config(run_dir))
    x = torch.stack([bundle.test[i][0] for i in range(min(n, len(bundle.test)))])
    return bundle, x


def step_train(cfg: TrainJobConfig, run_dir: Path, *, resume: bool = False, progress: bool | None = None,
               k_override: torch.Tensor | None = None, latency_table: Mapping[str, Any] | None = None,
               ) -> dict[str, Any]:
    """Dense -> sparse (method) -> projection -> fine-tune; returns ``metrics.json``'s content.

    ``k_override`` (S,): groups kept per scope instead of ``cfg.sparsity``; ``latency_table``: see ``build_groups``.
    """
    from hwprune.training.job import run_train_job

    return run_train_job(cfg, run_dir, resume=resume, progress=progress, k_override=k_override,
                         latency_table=latency_table).metrics


def step_prune(run_dir: Path) -> dict[str, Any]:
    """Surgery on ``RUN_DIR/sparse``: writes ``pruned.*`` and ``surgery_plan.json``; returns a summary."""
    from hwprune.groups import build_groups
    from hwprune.models.complexity import count_params_and_macs
    from hwprune.surgery.remove import remove_zero_groups
    from hwprune.training.loop import evaluate

    run_dir = Path(run_dir)
    profile = run_profile(run_dir)
    model, meta = load_model(run_dir / "sparse")
    example = torch.zeros(1, *meta["input_shape"])
    bundle, x = _test_batch(run_dir)
    # group weights do not matter for surgery (and weight_mode latency would need a latency table)
    gs = build_groups(model, replace(profile, weight_mode="uniform"), x[:1], phase="structured")
    compact, plan = remove_zero_groups(model, gs, x[:1], check_inputs=[x])
    atomic_write_json(run_dir / "surgery_plan.json", plan.to_dict())
    acc_sparse = evaluate(model, bundle.test, batch_size=256)["accuracy"]
    acc_pruned = evaluate(compact, bundle.test, batch_size=256)["accuracy"]
    save_model(compact, run_dir / "pruned", input_shape=tuple(meta["input_shape"]), plan=plan.to_dict(),
               extra={"stage": "pruned", "accuracy": acc_pruned})
    p0, m0 = count_params_and_macs(model, example)
    p1, m1 = count_params_and_macs(compact, example)
    summary = {"params": {"sparse": p0, "pruned": p1}, "macs": {"sparse": m0, "pruned": m1},
               "accuracy": {"sparse": acc_sparse, "pruned": acc_pruned},
               "removed_channels": plan.removed_channels, "max_abs_diff": max(
                   (r.get("max_abs", 0.0) for r in plan.equivalence), default=0.0)}
    atomic_write_json(run_dir / "prune_summary.json", summary)
    return summary


def step_nm(run_dir: Path, cfg: TrainJobConfig, opts: PipelineOptions = PipelineOptions()) -> dict[str, Any] | None:
    """N:M phase on the compact model when the profile has nm rules; writes ``nm.*``. None if no nm rule."""
    from hwprune.training.nm import run_nm_phase

    run_dir = Path(run_dir)
    profile = run_profile(run_dir)
    if not profile.has_nm:
        return None
    model, meta = load_model(run_dir / "pruned")
    bundle, x = _test_batch(run_dir)
    info = run_nm_phase(model, profile, bundle, cfg, epochs=opts.nm_epochs, lam=opts.nm_lam, run_dir=run_dir)
    save_model(model, run_dir / "nm", input_shape=tuple(meta["input_shape"]), plan=meta.get("plan"),
               extra={"stage": "nm", **{k: v for k, v in info.items() if k != "layers"}})
    atomic_write_json(run_dir / "nm_summary.json", info)
    return info


def step_export(run_dir: Path) -> dict[str, Any]:
    """Export the dense model and the final model to ONNX with parity checks (``export_report.json``)."""
    from hwprune.runtime.export import ExportConfig, check_nm_pattern, export_and_validate

    run_dir = Path(run_dir)
    cfg = ExportConfig()
    dense, dmeta = load_model(run_dir / "dense")
    final, example, stage = load_run_model(run_dir)
    _, x = _test_batch(run_dir, n=8)
    rep_dense = export_and_validate(dense, x[:1], run_dir / "dense.onnx", cfg)
    rep_final = export_and_validate(final, x[:1], run_dir / "model.onnx", cfg)
    report: dict[str, Any] = {"stage": stage, "dense": rep_dense.to_dict(), "model": rep_final.to_dict()}
    if stage == "nm":
        from hwprune.training.nm import onnx_nm_weight_names

        nm_info = _read_json(run_dir / "nm_summary.json")
        names = onnx_nm_weight_names(run_dir / "model.onnx", final, nm_info["param_names"])
        report["nm_pattern"] = check_nm_pattern(run_dir / "model.onnx", nm_info["n"], nm_info["m"],
                                                weight_names=names).to_dict()
    if run_profile(run_dir).bench.backend == "openvino":  # the profile's runtime: check its outputs too
        from hwprune.runtime.availability import backend_problem
        from hwprune.runtime.openvino import validate_openvino

        if backend_problem("openvino") is None:
            report["openvino"] = validate_openvino(final, run_dir / "model.onnx")
    atomic_write_json(run_dir / "export_report.json", report)
    return report


def bench_spec_for(profile: HardwareProfile, opts: PipelineOptions) -> tuple[BenchSpec, str | None]:
    """The profile's bench spec with ``opts``' overrides; ONNX Runtime CPU (and a note) if its backend is absent."""
    import dataclasses

    from hwprune.runtime.availability import backend_problem

    spec = profile.bench
    changes: dict[str, Any] = {}
    if opts.bench_batch_sizes:
        changes["batch_sizes"] = tuple(opts.bench_batch_sizes)
    for name in ("iters", "warmup", "repeats"):
        v = getattr(opts, f"bench_{name}")
        if v is not None:
            changes[name] = v
    spec = dataclasses.replace(spec, **changes)
    problem = backend_problem(spec.backend, spec.provider, need_gpu_check=False)
    if problem is None:
        return spec, None
    if not opts.bench_fallback:
        raise MissingBackendError(problem)
    note = f"profile backend {spec.backend}/{spec.provider}/{spec.precision} unavailable here ({problem}); " \
           "timed on onnxruntime CPU fp32 instead"
    return dataclasses.replace(spec, backend="onnxruntime", provider="cpu", precision="fp32"), note


def step_bench(run_dir: Path, opts: PipelineOptions = PipelineOptions()) -> dict[str, Any]:
    """Time ``dense.onnx`` and ``model.onnx`` interleaved in one fresh worker; writes ``bench.json``."""
    from hwprune.runtime.bench import compare
    from hwprune.runtime.envinfo import collect_env

    run_dir = Path(run_dir)
    spec, note = bench_spec_for(run_profile(run_dir), opts)
    for name in ("dense.onnx", "model.onnx"):
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir / name}: missing (run 'hwprune export {run_dir}' first)")
    result = compare(run_dir / "dense.onnx", run_dir / "model.onnx", spec)
    result.update(spec={k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.__dict__.items()},
                  fallback_note=note, env=collect_env())
    atomic_write_json(run_dir / "bench.json", result)
    return result


def step_report(run_dir: Path, *, step_seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """Assemble ``report.json`` / ``report.md`` / plots from the run directory's artifacts."""
    from hwprune.report.build import build_report
    from hwprune.report.render import write_report

    report = build_report(Path(run_dir), step_seconds=step_seconds or {})
    write_report(Path(run_dir), report)
    return report


def run(cfg: TrainJobConfig, run_dir: Path, *, opts: PipelineOptions = PipelineOptions(), resume: bool = False,
        progress: bool | None = None, k_override: torch.Tensor | None = None,
        latency_table: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole pipeline into ``run_dir``; returns the report dict."""
    run_dir = Path(run_dir)
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 3)
        log.info("step %s done in %.1f s", name, seconds[name])
        return out

    timed("train", step_train, cfg, run_dir, resume=resume, progress=progress, k_override=k_override,
          latency_table=latency_table)
    timed("prune", step_prune, run_dir)
    if run_profile(run_dir).has_nm:
        timed("nm", step_nm, run_dir, cfg, opts)
    else:
        for stale in ("nm.json", "nm.safetensors", "nm_summary.json"):
            (run_dir / stale).unlink(missing_ok=True)
    timed("export", step_export, run_dir)
    timed("bench", step_bench, run_dir, opts)
    return step_report(run_dir, step_seconds=seconds)


def sweep(cfg: TrainJobConfig, sparsities: list[float], run_dir: Path, *, opts: PipelineOptions = PipelineOptions(),
          progress: bool | None = None) -> dict[str, Any]:
    """Run ``run`` for each sparsity into ``run_dir/s<value>``; the dense model is trained once."""
    from hwprune.report.build import pareto_points
    from hwprune.report.plots import plot_pareto

    if not sparsities:
        raise ConfigError("sweep needs at least one sparsity")
    run_dir = Path(run_dir)
    points: list[dict[str, Any]] = []
    reports = []
    first_dense: Path | None = None
    for s in sparsities:
        sub = run_dir / f"s{s:g}"
        point_cfg = cfg.replace(sparsity=s, checkpoint=str(first_dense) if first_dense else cfg.checkpoint)
        rep = run(point_cfg, sub, opts=opts, progress=progress)
        first_dense = first_dense or sub / "dense"
        reports.append(rep)
        points.extend(pareto_points(rep, f"s={s:g}"))
    dense_pts = [p for p in points if p["kind"] == "dense"][:1]
    pts = dense_pts + [p for p in points if p["kind"] != "dense"]
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    plot_pareto(pts, run_dir / "plots" / "pareto.png")
    summary = {"sparsities": sparsities, "points": pts, "runs": [str(run_dir / f"s{s:g}") for s in sparsities]}
    atomic_write_json(run_dir / "sweep.json", summary)
    return summary
