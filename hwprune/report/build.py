"""Assemble the ``RunReport`` dict (``hwprune.report.render``) from a run directory's artifacts.

Reads ``metrics.json`` (train job), ``prune_summary.json`` + ``surgery_plan.json`` (surgery),
``nm_summary.json`` (phase 2), ``export_report.json``, ``bench.json`` and, when present,
``latency_budget.json``. Dense params/MACs are recounted on ``dense.*``, final ones on the model
that was exported.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import torch

from hwprune.base.errors import DataError
from hwprune.models.complexity import count_params_and_macs
from hwprune.report.render import REPORT_SCHEMA_VERSION
from hwprune.surgery.modelio import load_model, load_run_model

__all__ = ["build_report", "pareto_points"]


def _load(path: Path, required: bool = True) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise DataError(f"{path}: missing (run the earlier pipeline steps first)")
        return None
    return json.loads(path.read_text())


def _versions() -> dict[str, Any]:
    import importlib.metadata as md

    out: dict[str, Any] = {}
    for pkg in ("hwprune", "torch", "torch-pruning", "onnx", "onnxruntime", "numpy", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _notes(bench: dict[str, Any], nm: dict[str, Any] | None, metrics: dict[str, Any]) -> str:
    notes = []
    if bench.get("fallback_note"):
        notes.append(bench["fallback_note"])
    if nm:
        notes.append(f"N:M phase {nm['pattern']} on {len(nm['layers'])} layers: zeros kept as a mask in the ONNX "
                     "weights; only TensorRT sparse tensor cores turn them into speed (ORT CPU does not).")
    if not metrics.get("exact_k", True):
        notes.append("some scopes ended with fewer than k nonzero groups (groups that were dead at the start).")
    return " ".join(notes)


def build_report(run_dir: Path, *, step_seconds: dict[str, float]) -> dict[str, Any]:
    """The report dict for ``run_dir`` (validated later by ``hwprune.report.render.write_report``)."""
    run_dir = Path(run_dir)
    metrics = _load(run_dir / "metrics.json")
    prune = _load(run_dir / "prune_summary.json")
    bench = _load(run_dir / "bench.json")
    export = _load(run_dir / "export_report.json")
    plan = _load(run_dir / "surgery_plan.json")
    nm = _load(run_dir / "nm_summary.json", required=False)
    budget = _load(run_dir / "latency_budget.json", required=False)
    dense, meta = load_model(run_dir / "dense")
    final, _, stage = load_run_model(run_dir)
    example = torch.zeros(1, *meta["input_shape"])
    p0, m0 = count_params_and_macs(dense, example)
    p1, m1 = count_params_and_macs(final, example)
    acc_final = nm["accuracy"] if (nm and stage == "nm") else prune["accuracy"]["pruned"]
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "profile": metrics["profile"], "model": metrics["model"], "data": metrics["data"],
        "method": metrics["method"], "sparsity_target": metrics["sparsity"], "scopes": metrics["scopes"],
        "accuracy": {"dense": metrics["accuracy"]["dense"], "pruned": acc_final,
                     "sparse_masked": metrics["accuracy"]["sparse"]},
        "params": {"dense": p0, "pruned": p1}, "macs": {"dense": m0, "pruned": m1},
        "latency": {"dense": bench["dense"], "pruned": bench["pruned"]},
        "bench_spec": bench.get("spec"),
        "environment": bench.get("env", {}), "versions": _versions(),
        "timings": {**metrics.get("seconds", {}), **{f"step_{k}": v for k, v in step_seconds.items()}},
        "run_dir": str(run_dir), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "widths": plan.get("widths", []),
        "groups": metrics.get("groups"), "exact_k": metrics.get("exact_k"),
        "epochs": metrics.get("epochs"),
        "export": {"stage": export.get("stage"), "max_abs_diff": export["model"].get("max_abs_diff"),
                   "opset": export["model"].get("opset"), "passed": export["model"].get("passed")},
        "surgery": {"removed_channels": prune.get("removed_channels"), "max_abs_diff": prune.get("max_abs_diff")},
        "preprocessing": metrics.get("preprocessing"),
        "notes": _notes(bench, nm, metrics),
    }
    if nm:
        report["nm"] = {k: v for k, v in nm.items() if k not in ("param_names",)}
    if budget:
        report["latency_budget"] = budget
    staircase = _staircase_widths(run_dir, dense, plan)
    if staircase:
        report["staircase_widths"] = staircase
    if export.get("openvino"):
        keep = ("max_abs_diff", "passed", "atol", "rtol")
        report["export"]["openvino"] = {k: export["openvino"].get(k) for k in keep}
    return report


def _staircase_widths(run_dir: Path, dense: Any, plan: dict[str, Any]) -> dict[str, Any] | None:
    """Per layer, the kept width against the staircase of the run's calibrated profile (None if not calibrated)."""
    from hwprune.profiles import load_profile
    from hwprune.runtime.steptable import kept_vs_staircase

    path = run_dir / "profile.yaml"
    cal = load_profile(path).calibration if path.is_file() else None
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
