"""``hwprune run``: train (with surgery) -> (N:M) -> export -> bench -> report, one step per function.

Every step reads the run only through a :class:`~hwprune.training.rundir.RunDir`, so any step can
be re-run alone (``hwprune prune RUN_DIR``, ``hwprune export RUN_DIR``, ...); ``run`` hands one
RunDir to every step, so the profile is read and the dataset loaded once per pipeline. A step
given options (``PipelineOptions``) records them in ``config.yaml``; without, it uses the recorded
ones. ``sweep`` runs several sparsities, re-using the first point's dense model, and draws the
Pareto chart. No algorithm lives here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from hwprune.base.errors import ConfigError, DataError, MissingBackendError
from hwprune.base.files import atomic_write_json
from hwprune.base.outpath import check_writable_dir
from hwprune.profiles import BenchSpec, HardwareProfile
from hwprune.training.artifacts import BenchRecord, ExportRecord, NMSummary, SurgerySummary
from hwprune.training.config import TrainJobConfig
from hwprune.training.job import TrainJobResult
from hwprune.training.runconfig import PipelineOptions
from hwprune.training.rundir import RunDir

if TYPE_CHECKING:
    from hwprune.runtime.export import ExportConfig

__all__ = ["PipelineOptions", "run", "sweep", "step_train", "step_prune", "step_nm", "step_export", "step_bench",
           "step_report", "bench_spec_for", "fallback_spec", "export_model", "open_run"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def open_run(run: Path | str | RunDir) -> RunDir:
    """``run`` itself if it is a RunDir, else ``RunDir.open(run)`` (checks the run format)."""
    return run if isinstance(run, RunDir) else RunDir.open(run)


def step_train(cfg: TrainJobConfig, run_dir: Path | RunDir, *, opts: PipelineOptions | None = None,
               resume: bool = False, progress: bool | None = None, k_override: torch.Tensor | None = None,
               latency_table: Mapping[str, Any] | None = None) -> TrainJobResult:
    """Dense -> sparse (method) -> projection -> surgery -> fine-tune; ``metrics.json`` is ``result.metrics``.

    ``opts`` are recorded in ``config.yaml`` for the later steps; ``k_override`` (S,): groups kept
    per scope instead of ``cfg.sparsity``; ``latency_table``: see ``build_groups``.
    """
    from hwprune.training.job import run_train_job

    return run_train_job(cfg, run_dir, resume=resume, progress=progress, k_override=k_override,
                         latency_table=latency_table, opts=opts)


def step_prune(run: Path | RunDir) -> SurgerySummary:
    """Surgery: idempotent on a run whose train job already did it; else on ``sparse.*`` (writes ``pruned.*``).

    A run trained with ``compact_finetune: false`` has a fine-tuned masked model; its groups are
    rebuilt from ``profile.yaml`` and checked against ``groups.json`` before the surgery.
    """
    from hwprune.training.compact import compact_run_model, surgery_groups
    from hwprune.training.loop import evaluate

    rd = open_run(run)
    if rd.has_surgery():
        rd.load_model("pruned")  # the compact model still loads (its plan replays)
        return rd.surgery()
    check_writable_dir(rd.root, option="RUN_DIR")
    model, _ = rd.load_model("sparse")
    gs = surgery_groups(model, rd.profile, rd, what="sparse model")
    rd.check_groups(gs)
    val = rd.data().val

    def val_accuracy(m: torch.nn.Module) -> float | None:
        return None if val is None else evaluate(m, val, batch_size=256)["accuracy"]

    compact, plan, summary = compact_run_model(model, gs, rd, val_accuracy=val_accuracy, after_finetune=True)
    rd.save_model(compact, "pruned", plan=plan.to_dict())
    return summary


def step_nm(run: Path | RunDir, opts: PipelineOptions | None = None) -> NMSummary | None:
    """N:M phase on the compact model when the profile has nm rules; writes ``nm.*``. None if no nm rule.

    ``opts`` None: the options recorded in ``config.yaml``; given: used and recorded.
    """
    from hwprune.training.nm import run_nm_phase

    rd = open_run(run)
    if not rd.profile.has_nm:
        return None
    check_writable_dir(rd.root, option="RUN_DIR")
    opts = _recorded(rd, opts)
    model, meta = rd.load_model("pruned")
    info = run_nm_phase(model, rd, opts)
    rd.save_model(model, "nm", plan=meta.get("plan"),
                  extra={k: v for k, v in info.to_dict().items() if k not in ("layers", "param_names")})
    rd.write_nm(info)
    return info


def export_model(model: torch.nn.Module, example: torch.Tensor, onnx_path: Path, cfg: ExportConfig | None = None, *,
                 source: str, stage: str | None = None,
                 record_writer: Callable[[Path, ExportRecord], None] | None = None) -> ExportRecord:
    """Export one model to ``onnx_path`` with its parity check and write its record ``<name>.export.json``.

    The one writer of export records (the run's export step and ``hwprune export --out``). A parity
    failure writes a record with ``passed: false`` and every mismatch, then re-raises.

    Args:
        model: the model (eval mode is set for the export and restored).
        example: one input ``(1, C, H, W)`` (also an extra parity case).
        onnx_path: destination (written atomically).
        cfg: exporter settings (None: the defaults).
        source: what is exported, for the record (``run RUN_DIR`` / ``model NAME``).
        stage: the run stage, or None.
        record_writer: ``(onnx_path, record)`` writer (a RunDir's ``write_export``); None: beside the file.
    """
    from hwprune.base.errors import NumericalMismatchError
    from hwprune.runtime.export import ExportConfig, export_and_validate

    cfg = cfg or ExportConfig()
    write = record_writer or (lambda path, rec: atomic_write_json(ExportRecord.path_for(path), rec.to_dict()))
    log.info("exporting %s -> %s (opset %d, parity at batch 1 and 3)", stage or source, onnx_path, cfg.opset)
    try:
        rep = export_and_validate(model, example, onnx_path, cfg).to_dict()
    except NumericalMismatchError as exc:
        write(onnx_path, ExportRecord(onnx=Path(onnx_path).name, source=source, stage=stage, report={
            "passed": False, "error": str(exc), "mismatches": exc.mismatches, "atol": cfg.atol, "rtol": cfg.rtol}))
        raise
    record = ExportRecord(onnx=Path(onnx_path).name, source=source, stage=stage, report=rep)
    write(onnx_path, record)
    return record


def step_export(run: Path | RunDir, *, config: ExportConfig | None = None, stage: str | None = None) -> ExportRecord:
    """Export to ONNX with parity checks, one record per model (``<name>.export.json``).

    ``stage`` None: the dense model (``dense.onnx``) and the most processed one (``model.onnx``),
    what the timing step compares; returns the latter's record. ``stage`` given: only that stage, at
    ``RunDir.onnx_path_of(stage)`` (``dense.onnx``, ``model.onnx`` for the final stage, else
    ``<stage>.onnx``), so no other model's file or record is replaced.
    """
    from hwprune.runtime.export import check_nm_pattern

    rd = open_run(run)
    check_writable_dir(rd.root, option="RUN_DIR")
    source = f"run {rd.root}"
    x = rd.example_input()
    final = rd.final_stage()
    stages = [stage] if stage is not None else ["dense", final]
    models = {st: rd.load_model(st)[0] for st in stages}  # every model loads before any file is written
    record: ExportRecord | None = None
    for st, model in models.items():
        path = rd.onnx_path_of(st)
        record = export_model(model, x, path, config, source=source, stage=st, record_writer=rd.write_export)
        if st == "nm":
            from hwprune.training.nm import onnx_nm_weight_names

            nm_info = rd.nm()
            if nm_info is None:
                raise DataError(f"{rd.root}: nm.* exists but nm_summary.json does not; re-run 'hwprune nm {rd.root}'")
            names = onnx_nm_weight_names(path, model, nm_info.param_names)
            pattern = check_nm_pattern(path, nm_info.n, nm_info.m, weight_names=names).to_dict()
            record = dataclasses.replace(record, nm_pattern=pattern)
            rd.write_export(path, record)
        if st == final and rd.profile.bench.backend == "openvino":  # the profile's runtime: check it too
            from hwprune.runtime.availability import backend_problem
            from hwprune.runtime.openvino import validate_openvino

            if backend_problem("openvino") is None:
                record = dataclasses.replace(record, openvino=validate_openvino(model, path))
                rd.write_export(path, record)
    assert record is not None  # stages is never empty
    return record


def fallback_spec(spec: BenchSpec, *, allow: bool = True, who: str = "the profile") -> tuple[BenchSpec, str | None]:
    """``spec``, or ORT CPU fp32 when its backend is missing here and ``allow``; returns ``(spec, note)``.

    ``note`` (None when nothing was replaced) says loudly what was asked and what is timed instead:
    such numbers say nothing about the profile's device. With ``allow`` False a missing backend is
    a ``MissingBackendError``.
    """
    from hwprune.runtime.availability import backend_problem

    problem = backend_problem(spec.backend, spec.provider, need_gpu_check=False)
    if problem is None:
        return spec, None
    if not allow:
        raise MissingBackendError(problem)
    reason = problem.split(";")[0]
    note = (f"{who} asks for {spec.backend}/{spec.provider}/{spec.precision}, which is not available here "
            f"({reason}); TIMED ON onnxruntime/cpu/fp32 INSTEAD: these latencies are not the profile's device")
    return dataclasses.replace(spec, backend="onnxruntime", provider="cpu", precision="fp32"), note


def bench_spec_for(profile: HardwareProfile, opts: PipelineOptions) -> tuple[BenchSpec, str | None]:
    """The profile's timing spec with ``opts``' overrides, falling back to ORT CPU when allowed (``fallback_spec``)."""
    spec = dataclasses.replace(profile.bench, **opts.bench_overrides())
    return fallback_spec(spec, allow=opts.bench_fallback, who=f"profile {profile.name}")


def step_bench(run: Path | RunDir, opts: PipelineOptions | None = None) -> BenchRecord:
    """Time ``dense.onnx`` and ``model.onnx`` interleaved in one fresh worker; writes ``bench.json``.

    ``opts`` None: the timing options recorded in ``config.yaml``; given: used and recorded.
    """
    from hwprune.runtime.bench import compare
    from hwprune.runtime.envinfo import collect_env

    rd = open_run(run)
    check_writable_dir(rd.root, option="RUN_DIR")
    spec, note = bench_spec_for(rd.profile, _recorded(rd, opts))
    for which in ("dense", "final"):
        if not rd.onnx_path(which).is_file():
            raise DataError(f"{rd.onnx_path(which)}: missing (run 'hwprune export {rd.root}' first)")
    if note:
        log.warning("%s", note)
    log.info("timing dense.onnx and model.onnx on %s/%s/%s, batch %s: %d fresh sessions x %d iterations each "
             "(fresh worker process)", spec.backend, spec.provider, spec.precision,
             ",".join(str(b) for b in spec.batch_sizes), spec.repeats, spec.iters)
    result = compare(rd.onnx_path("dense"), rd.onnx_path("final"), spec)
    record = BenchRecord(dense=result["dense"], pruned=result["pruned"], speedup=result["speedup"],
                         spec={k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.__dict__.items()},
                         env=collect_env(), fallback_note=note, dense_path=result["dense_path"],
                         pruned_path=result["pruned_path"])
    rd.write_bench(record)
    return record


def step_report(run: Path | RunDir, *, step_seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """Assemble ``report.json`` / ``report.md`` / plots from the run directory's artifacts."""
    from hwprune.report.build import build_report
    from hwprune.report.render import write_report

    rd = open_run(run)
    report = build_report(rd, step_seconds=step_seconds or {})
    json_path, md_path = rd.report_paths
    write_report(report, json_path=json_path, md_path=md_path, plots_dir=rd.plots_dir, log_path=rd.log_path)
    return report


def _recorded(rd: RunDir, opts: PipelineOptions | None) -> PipelineOptions:
    """``opts`` (recorded in ``config.yaml``) or, when None, the options ``config.yaml`` holds."""
    if opts is None:
        return rd.config.pipeline
    rd.record_pipeline(opts)
    return opts


def run(cfg: TrainJobConfig, run_dir: Path, *, opts: PipelineOptions | None = None, resume: bool = False,
        progress: bool | None = None, k_override: torch.Tensor | None = None,
        latency_table: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole pipeline into ``run_dir``; returns the report dict (``report.json``)."""
    opts = opts or PipelineOptions()
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 3)
        log.info("step %s done in %.1f s", name, seconds[name])
        return out

    rd = timed("train", step_train, cfg, run_dir, opts=opts, resume=resume, progress=progress,
               k_override=k_override, latency_table=latency_table).rundir
    timed("prune", step_prune, rd)
    if rd.profile.has_nm:
        timed("nm", step_nm, rd)
    else:
        rd.clear_nm()
    timed("export", step_export, rd)
    timed("bench", step_bench, rd)
    return step_report(rd, step_seconds=seconds)


def sweep(cfg: TrainJobConfig, sparsities: list[float], run_dir: Path, *, opts: PipelineOptions | None = None,
          progress: bool | None = None) -> dict[str, Any]:
    """Run ``run`` for each sparsity into ``run_dir/s<value>``; the dense model is trained once."""
    from hwprune.report.build import pareto_points
    from hwprune.report.plots import plot_pareto

    if not sparsities:
        raise ConfigError("sweep needs at least one sparsity")
    run_dir = Path(run_dir)
    points: list[dict[str, Any]] = []
    first_dense: Path | None = None
    for s in sparsities:
        sub = run_dir / f"s{s:g}"
        point_cfg = cfg.replace(sparsity=s, checkpoint=str(first_dense) if first_dense else cfg.checkpoint)
        rep = run(point_cfg, sub, opts=opts, progress=progress)
        first_dense = first_dense or RunDir(sub).model_stem("dense")
        points.extend(pareto_points(rep, f"s={s:g}"))
    dense_pts = [p for p in points if p["kind"] == "dense"][:1]
    pts = dense_pts + [p for p in points if p["kind"] != "dense"]
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    plot_pareto(pts, run_dir / "plots" / "pareto.png")
    summary = {"sparsities": sparsities, "points": pts, "runs": [str(run_dir / f"s{s:g}") for s in sparsities]}
    atomic_write_json(run_dir / "sweep.json", summary)
    return summary
