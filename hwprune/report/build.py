"""Assemble the ``RunReport`` dict (``hwprune.report.render``) from a run, read through its ``RunDir``.

Reads the train metrics, the surgery summary and plan, the N:M summary (phase 2), the export
record, the timing record and, when present, the latency budget. Dense params/MACs are recounted on
``dense.*``, final ones on the model that was exported. Accuracies are test-split accuracies of the
dense and the exported model, each measured once at the end of its step (``accuracy_of`` names
the models); validation accuracies of every stage are in ``val_accuracy``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any

from hwprune.base.errors import DataError
from hwprune.models.complexity import count_params_and_macs
from hwprune.report.render import REPORT_SCHEMA_VERSION
from hwprune.training.artifacts import BenchRecord, NMSummary, TrainMetrics, describe_selection
from hwprune.training.compact import alignment_warnings
from hwprune.training.rundir import RunDir

__all__ = ["build_report", "pareto_points"]


def _versions() -> dict[str, Any]:
    import importlib.metadata as md

    out: dict[str, Any] = {}
    for pkg in ("hwprune", "torch", "torch-pruning", "onnx", "onnxruntime", "numpy", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _widths(rows: list[dict[str, Any]], alignment: int) -> list[dict[str, Any]]:
    """Plan width rows with ``aligned`` judged against the profile's block (a pruned width that lost it: False)."""
    out = []
    for w in rows:
        w = dict(w)
        if alignment > 1 and w.get("after") != w.get("before"):
            w["aligned"] = int(w.get("after", 0)) % alignment == 0
            w["profile_block"] = alignment
        out.append(w)
    return out


def _timing(rd: RunDir, bench: BenchRecord) -> dict[str, Any]:
    """What the profile asked to time on and what was timed (``fallback_note`` when they differ)."""
    keys = ("backend", "provider", "precision")
    asked = {k: getattr(rd.profile.bench, k) for k in keys}
    timed = {k: bench.spec.get(k) for k in keys}
    return {"profile": asked, "timed": timed, "same_as_profile": asked == timed, "fallback_note": bench.fallback_note}


def _notes(bench: BenchRecord, nm: NMSummary | None, metrics: TrainMetrics, warnings: list[str]) -> str:
    notes = []
    if bench.fallback_note:
        notes.append(bench.fallback_note)
    notes.append(f"Groups: {describe_selection(metrics.groups)}.")
    notes.extend(f"{w}." for w in warnings)
    if nm:
        notes.append(f"N:M phase {nm.pattern} on {len(nm.layers)} layers: zeros kept as a mask in the ONNX "
                     "weights; only TensorRT sparse tensor cores turn them into speed (ORT CPU does not).")
    if not metrics.exact_k:
        notes.append("some scopes ended with fewer than k nonzero groups (groups that were dead at the start).")
    return " ".join(notes)


def _final_accuracy(rd: RunDir, stage: str, metrics: TrainMetrics, nm: NMSummary | None) -> float | None:
    """Test accuracy of the exported stage: the N:M model's, or the train job's final model's."""
    if stage == "nm" and nm is not None:
        return nm.test_accuracy
    if stage in ("pruned", metrics.final_stage):  # the compact model computes the masked model's function
        return metrics.test_accuracy.final
    raise DataError(f"{rd.root}: the exported stage '{stage}' has no test accuracy (re-run the pipeline)")


def build_report(rd: RunDir, *, step_seconds: dict[str, float]) -> dict[str, Any]:
    """The report dict for a run (validated later by ``hwprune.report.render.write_report``)."""
    metrics, prune, export, plan, nm = rd.metrics(), rd.surgery(), rd.export(), rd.surgery_plan(), rd.nm()
    bench = rd.bench()
    if bench is None:
        raise DataError(f"{rd.root}: bench.json missing (run the timing step first)")
    stage = export.stage or metrics.final_stage  # a run's export record always names its stage
    dense, _ = rd.load_model("dense")
    final, _ = rd.load_model(stage)
    example = rd.example_input()
    p0, m0 = count_params_and_macs(dense, example)
    p1, m1 = count_params_and_macs(final, example)
    widths = _widths(plan.get("widths", []), rd.profile.alignment)
    warnings = alignment_warnings(rd.groups_description().get("layers", []) if rd.has_groups() else [],
                                  widths, rd.profile.alignment)
    timing = _timing(rd, bench)
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "profile": metrics.profile, "model": metrics.model, "data": metrics.data,
        "method": metrics.method, "sparsity_target": metrics.sparsity,
        "scopes": [dataclasses.asdict(s) for s in metrics.scopes],
        "accuracy": {"dense": metrics.test_accuracy.dense, "pruned": _final_accuracy(rd, stage, metrics, nm)},
        "accuracy_of": {"split": "test", "dense": "dense", "pruned": stage, "test_images": metrics.splits.test},
        "val_accuracy": {**dataclasses.asdict(metrics.val_accuracy), "val_images": metrics.splits.val},
        "splits": dataclasses.asdict(metrics.splits),
        "params": {"dense": p0, "pruned": p1}, "macs": {"dense": m0, "pruned": m1},
        "latency": {"dense": bench.dense, "pruned": bench.pruned},
        "bench_spec": bench.spec,
        "environment": bench.env, "versions": _versions(),
        "timings": {**metrics.seconds, **{f"step_{k}": v for k, v in step_seconds.items()}},
        "run_dir": str(rd.root), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "widths": widths, "warnings": warnings, "timing": timing,
        "sparsity": {"budget": metrics.budget, "requested": metrics.sparsity if metrics.budget == "sparsity" else None,
                     "achieved": 1 - metrics.groups.nonzero / metrics.groups.total if metrics.groups.total else 0.0},
        "selection": {"zeroed_by": metrics.groups.zeroed_by, "text": describe_selection(metrics.groups)},
        "groups": dataclasses.asdict(metrics.groups), "exact_k": metrics.exact_k,
        "epochs": metrics.epochs, "finetuned_model": "compact" if not prune.after_finetune else "masked",
        "export": {"stage": export.stage, "max_abs_diff": export.report.get("max_abs_diff"),
                   "opset": export.report.get("opset"), "passed": export.passed},
        "surgery": {"removed_channels": prune.removed_channels, "max_abs_diff": prune.max_abs_diff},
        "preprocessing": metrics.preprocessing,
        "notes": _notes(bench, nm, metrics, warnings),
    }
    if nm:
        report["nm"] = {k: v for k, v in nm.to_dict().items() if k != "param_names"}
    budget = rd.latency_budget()
    if budget:
        report["latency_budget"] = budget
    staircase = _staircase_widths(rd, dense, plan)
    if staircase:
        report["staircase_widths"] = staircase
    if export.openvino:
        keep = ("max_abs_diff", "passed", "atol", "rtol")
        report["export"]["openvino"] = {k: export.openvino.get(k) for k in keep}
    return report


def _staircase_widths(rd: RunDir, dense: Any, plan: dict[str, Any]) -> dict[str, Any] | None:
    """Per layer, the kept width against the staircase of the run's calibrated profile (None if not calibrated)."""
    from hwprune.runtime.steptable import kept_vs_staircase

    cal = rd.profile.calibration
    if cal is None:
        return None
    blocks = dict(cal.blocks)
    return {"blocks": blocks, "backend": cal.backend, "threads": cal.threads, "batch": cal.batch,
            "layers": kept_vs_staircase(dense, plan.get("widths", []), blocks)}


def pareto_points(report: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """Dense and pruned accuracy-vs-latency points of one report (smallest timed batch)."""
    pts = []
    for kind in ("dense", "pruned"):
        lat = sorted(report["latency"][kind], key=lambda s: s["batch"])
        if lat:
            pts.append({"label": "dense" if kind == "dense" else label, "accuracy": report["accuracy"][kind],
                        "latency_ms": lat[0]["median_ms"], "kind": kind})
    return pts
