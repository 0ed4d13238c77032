"""Latency-aware pruning benchmark: group-weight modes at the same measured ORT CPU latency.

For each model (ResNet-20, MobileNetV2 on digits upscaled to 32x32 by default) and each group-weight
mode (uniform, size, flops, latency; x86-avx2-ort rules with one *global* scope so that the weights
decide which layers lose channels) plus the per-layer greedy ("budget-per-layer": per-layer scopes,
widths chosen by ``choose_k_for_budget``), every latency budget is met with
``hwprune.pipeline.budget.run_with_budget`` (prediction -> train -> measure -> one correction). The
dense model is trained once per model and re-used. Output: accuracy at (about) equal measured
latency, and latency at equal accuracy (linear interpolation over the budgets), as Markdown + CSV
+ env JSON + PNG in ``benchmarks/results/latency_aware-<tag>.*``.

    python benchmarks/latency_aware.py --quick            # minutes on 2 shared cores
    python benchmarks/latency_aware.py                    # full: 3 budgets, more epochs, both models
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from hwprune.base.files import atomic_write_json, atomic_write_text
from hwprune.pipeline.budget import run_with_budget
from hwprune.pipeline.steps import PipelineOptions, step_bench, step_export, step_prune, step_train
from hwprune.profiles import load_profile, profile_to_dict
from hwprune.report.plots import save_figure
from hwprune.runtime.envinfo import collect_env
from hwprune.runtime.latency import default_cache_path
from hwprune.training.config import TrainJobConfig
from hwprune.training.rundir import RunDir

__all__ = ["main"]

MODES = ("uniform", "size", "flops", "latency", "budget-per-layer")


def _light_run(cfg: TrainJobConfig, run_dir: Path, *, opts: PipelineOptions, progress: bool | None = None,
               k_override: Any = None, latency_table: Any = None) -> None:
    """Train -> prune -> export -> bench (no N:M, no report): the steps the benchmark needs."""
    step_train(cfg, run_dir, progress=progress, k_override=k_override, latency_table=latency_table)
    step_prune(run_dir)
    step_export(run_dir)
    step_bench(run_dir, opts)


def _profile_file(work: Path, mode: str) -> Path:
    base = load_profile("x86-avx2-ort")
    if mode == "budget-per-layer":
        prof = dataclasses.replace(base, name="x86-avx2-ort-perlayer", weight_mode="uniform", scope="per_layer")
    else:
        prof = dataclasses.replace(base, name=f"x86-avx2-ort-global-{mode}", weight_mode=mode, scope="global")
    path = work / "profiles" / f"{prof.name}.yaml"
    atomic_write_text(path, yaml.safe_dump(profile_to_dict(prof), sort_keys=False))
    return path


def _interp_latency(points: list[tuple[float, float]], acc: float) -> float | None:
    """Latency at accuracy ``acc`` by linear interpolation over (latency, accuracy) points (None: outside)."""
    pts = sorted(points)
    for (l0, a0), (l1, a1) in zip(pts, pts[1:], strict=False):
        if min(a0, a1) <= acc <= max(a0, a1):
            return l0 if a1 == a0 else l0 + (acc - a0) * (l1 - l0) / (a1 - a0)
    return next((lat for lat, a in pts if a == acc), None)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=False):
        for mode in MODES:
            pts = sorted((r["measured_ms"], r["accuracy"]) for r in rows if r["model"] == model and r["mode"] == mode)
            if pts:
                ax.plot(*zip(*pts, strict=False), marker="o", label=mode)
        dense = [r for r in rows if r["model"] == model]
        if dense:
            ax.axvline(dense[0]["dense_ms"], color="grey", ls=":", label="dense latency")
        ax.set_title(model)
        ax.set_xlabel("measured latency, batch 1 (ms, ORT CPU)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)


def _markdown(rows: list[dict[str, Any]], iso: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"# Latency-aware pruning ({'quick' if args.quick else 'full'})", "",
             f"Data {args.data} at {args.image_size}x{args.image_size}, train_limit {args.train_limit}, epochs "
             f"dense {args.dense_epochs} / sparse {args.epochs} / finetune {args.finetune_epochs}; profile "
             "x86-avx2-ort rules (channel_block 8) with one global scope per weight mode, or per-layer scopes "
             "with greedy widths (budget-per-layer). Latency: ORT CPU fp32, batch 1, median ms.", "",
             "## Accuracy at the same latency budget", "",
             "| model | mode | budget | budget ms | predicted ms | measured ms | runs | accuracy | dense acc |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {r['budget']} | {r['budget_ms']:.3f} | {r['predicted_ms']:.3f} "
                     f"| {r['measured_ms']:.3f} | {r['runs']} | {r['accuracy']:.4f} | {r['dense_accuracy']:.4f} |")
    lines += ["", "## Latency at the same accuracy (interpolated between budgets)", "",
              "| model | target accuracy | mode | latency ms |", "|---|---|---|---|"]
    for r in iso:
        lat = "n/a (outside the measured range)" if r["latency_ms"] is None else f"{r['latency_ms']:.3f}"
        lines.append(f"| {r['model']} | {r['target_accuracy']:.4f} | {r['mode']} | {lat} |")
    lines += ["", f"Command: `{' '.join(sys.argv)}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small subset, few epochs, two budgets")
    ap.add_argument("--models", default="resnet20,mobilenetv2")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--budgets", default=None, help="comma list, e.g. 0.5x,0.65x,0.8x")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--dense-epochs", type=int, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--work", type=Path, default=Path("runs/latency_aware"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args(argv)
    q = args.quick
    args.budgets = args.budgets or ("0.55x,0.8x" if q else "0.5x,0.65x,0.8x")
    args.train_limit = args.train_limit if args.train_limit is not None else (1000 if q else None)
    args.epochs = args.epochs or (1 if q else 6)
    args.dense_epochs = args.dense_epochs or (5 if q else 15)
    args.finetune_epochs = args.finetune_epochs or (1 if q else 3)
    tag = args.tag or ("quick" if q else "full")
    opts = PipelineOptions(bench_batch_sizes=(1,), bench_iters=30 if q else 100, bench_repeats=3, bench_warmup=5)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for model in args.models.split(","):
        dense_ckpt: Path | None = None
        for mode in args.modes.split(","):
            if mode not in MODES:
                raise SystemExit(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
            prof = _profile_file(args.work, mode)
            for budget in args.budgets.split(","):
                run_dir = args.work / model / mode / budget
                cfg = TrainJobConfig(model=model, data=args.data, image_size=args.image_size,
                                     train_limit=args.train_limit, profile=str(prof), epochs=args.epochs,
                                     dense_epochs=args.dense_epochs, finetune_epochs=args.finetune_epochs,
                                     checkpoint=str(dense_ckpt) if dense_ckpt else None, lr=0.05, batch_size=64)
                t0 = time.perf_counter()
                res = run_with_budget(cfg, run_dir, budget, opts, run_fn=_light_run, progress=False,
                                      cache_path=default_cache_path())
                dense_ckpt = dense_ckpt or run_dir / "dense"
                rd = RunDir.open(run_dir)
                metrics, prune = rd.metrics(), rd.surgery()
                row = {"model": model, "mode": mode, "budget": budget, "budget_ms": res["budget_ms"],
                       "dense_ms": res["dense_ms"], "predicted_ms": res["predicted_ms"],
                       "measured_ms": res["measured_ms"], "runs": len(res["iterations"]),
                       "accuracy": metrics.test_accuracy.final, "dense_accuracy": metrics.test_accuracy.dense,
                       "macs": prune.macs["pruned"], "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    iso = []
    for model in sorted({r["model"] for r in rows}):
        mrows = [r for r in rows if r["model"] == model]
        modes = sorted({r["mode"] for r in mrows}, key=MODES.index)
        target = min(max(r["accuracy"] for r in mrows if r["mode"] == m) for m in modes)
        for m in modes:
            pts = [(r["measured_ms"], r["accuracy"]) for r in mrows if r["mode"] == m]
            iso.append({"model": model, "target_accuracy": target, "mode": m,
                        "latency_ms": _interp_latency(pts, target)})
    stem = args.out / f"latency_aware-{tag}"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(stem.with_suffix(".csv"), buf.getvalue())
    atomic_write_text(stem.with_suffix(".md"), _markdown(rows, iso, args))
    atomic_write_json(stem.with_suffix(".env.json"), {"env": collect_env(), "args": {k: str(v) for k, v in
                                                                                     vars(args).items()},
                                                      "iso_accuracy": iso,
                                                      "seconds": round(time.perf_counter() - t_start, 1)})
    _plot(rows, stem.with_suffix(".png"))
    print(_markdown(rows, iso, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
