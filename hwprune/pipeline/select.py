"""Measured profile selection: prune a model under every matching profile and time it on THIS machine."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwprune.base.checks import check_sparsity
from hwprune.profiles import HardwareProfile
from hwprune.profiles.machine import MachineFacts, detect_machine, load_all, rank_profiles

__all__ = ["measure_profiles"]


def _measurable(p: HardwareProfile, facts: MachineFacts) -> str | None:
    """None if ``p``'s bench backend runs here, else the reason it cannot."""
    from hwprune.runtime.availability import backend_problem

    b = p.bench
    if b.backend == "tensorrt" and not facts.gpus:
        return "backend tensorrt/cuda is not available on this machine (no CUDA GPU)"
    return backend_problem(b.backend, b.provider, need_gpu_check=False)


def _prune_random(model: Any, profile: HardwareProfile, example: Any, sparsity: float) -> tuple[Any, dict[str, Any]]:
    """Zero the lowest-norm removable groups beyond k per scope, then run surgery -> (compact, plan)."""
    import torch

    from hwprune.groups import build_groups
    from hwprune.groups.topk import topk_mask
    from hwprune.surgery.remove import remove_zero_groups

    gs = build_groups(model, profile, example, "structured")
    score = torch.where(gs.removable, gs.norms(), torch.full((gs.num_groups,), -torch.inf, dtype=torch.float64))
    drop = gs.removable & ~topk_mask(gs, gs.k_for_sparsity(sparsity), score)
    if bool(drop.any()):
        gs.zero_(torch.nonzero(drop).flatten())
    compact, plan = remove_zero_groups(model, gs, example)
    return compact, plan.to_dict()


def measure_profiles(
    model_name: str,
    facts: MachineFacts | None = None,
    *,
    sparsity: float = 0.5,
    input_size: int = 32,
    in_channels: int = 3,
    num_classes: int = 10,
    model_kwargs: dict[str, Any] | None = None,
    profiles: Sequence[HardwareProfile | str] | None = None,
    batch_size: int = 1,
    warmup: int | None = None,
    iters: int | None = None,
    repeats: int | None = None,
    seed: int = 0,
    work_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Prune ``model_name`` at ``sparsity`` under every matching profile and time it on THIS machine.

    Rows (sorted by ``median_ms``, skipped profiles last): ``profile``, ``score``, ``status``
    (``measured`` | ``skipped``), ``reason``, ``alignment``, ``params``, ``macs``, ``median_ms``,
    ``p90_ms``, ``speedup`` (dense median / pruned median, batch ``batch_size``) and ``recommended``
    (True on the fastest measured row with ``removed`` > 0 channels). A ``dense`` reference row is included.
    ``warmup``/``iters``/``repeats`` override each profile's bench settings (None: the profile's).

    Long and with many parameters because it is a mini pipeline (build, prune, export, time) whose options are
    the CLI's, passed through.
    """
    import torch

    from hwprune.models import count_params_and_macs, create_model
    from hwprune.runtime.bench import measure
    from hwprune.runtime.export import to_onnx

    sparsity = check_sparsity(sparsity)
    facts = facts or detect_machine()
    loaded = {p.name: p for p in load_all(profiles)}
    ranked = [m for m in rank_profiles(facts, list(loaded.values())) if m.matched]
    counts = (("warmup", warmup), ("iters", iters), ("repeats", repeats))
    overrides: dict[str, Any] = {k: v for k, v in counts if v is not None}

    def fresh() -> torch.nn.Module:
        torch.manual_seed(seed)
        return create_model(model_name, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                            **(model_kwargs or {})).eval()

    example = torch.randn(1, in_channels, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="hwprune-select-") as tmp:
        def timed(model: torch.nn.Module, name: str, profile: HardwareProfile) -> dict[str, Any]:
            path = to_onnx(model, example, Path(tmp) / f"{name}.onnx")
            spec = dataclasses.replace(profile.bench, **overrides)
            stats = measure(path, spec, batch_size=batch_size)[0]
            params, macs = count_params_and_macs(model, example)
            return {"params": params, "macs": macs, "median_ms": stats.median_ms, "p90_ms": stats.p90_ms}

        dense_by_backend: dict[str, dict[str, Any]] = {}

        def dense_row(p: HardwareProfile) -> dict[str, Any]:
            """The unpruned model timed on ``p``'s backend (once per backend; ORT CPU's row is named dense)."""
            key = f"{p.bench.backend}/{p.bench.provider}"
            if key not in dense_by_backend:
                name = "dense" if key == "onnxruntime/cpu" else f"dense@{p.bench.backend}"
                dense_by_backend[key] = {"profile": name, "backend": p.bench.backend, "score": None,
                                         "status": "measured", "reason": "unpruned reference", "alignment": 1,
                                         **timed(fresh(), name.replace("@", "-"), p)}
                rows.append(dense_by_backend[key])
            return dense_by_backend[key]

        for m in ranked:
            p = loaded[m.name]
            base = {"profile": p.name, "backend": p.bench.backend, "score": m.score, "alignment": p.alignment}
            why = _measurable(p, facts)
            if why is not None:
                rows.append({**base, "status": "skipped", "reason": why, "params": None, "macs": None,
                             "median_ms": None, "p90_ms": None})
                continue
            dense = dense_row(p)
            compact, plan = _prune_random(fresh(), p, example, sparsity)
            removed = sum(len(s.get("idxs", ())) for s in plan["steps"])
            reason = f"{removed} channels removed" if removed else "removes nothing structurally (a mask profile)"
            rows.append({**base, "status": "measured", "reason": reason, "removed": removed,
                         "dense_ms": dense["median_ms"], **timed(compact, p.name, p)})
    for r in rows:
        ref = r.pop("dense_ms", r["median_ms"] if r["profile"].startswith("dense") else None)
        ok = r["status"] == "measured" and ref is not None and r["median_ms"]
        r["speedup"] = ref / r["median_ms"] if ok else None
        r["recommended"] = False
    rows.sort(key=lambda r: (r["status"] != "measured", r["median_ms"] if r["median_ms"] is not None else 0.0,
                             r["profile"]))
    # never recommend a profile that removes nothing: its speed is the dense model's, whatever the timing noise
    best = next((r for r in rows if r["status"] == "measured" and not r["profile"].startswith("dense")
                 and r.get("removed")), None)
    if best is not None:
        best["recommended"] = True
    return rows
