"""Compare the sparse methods at equal total epochs: accuracy, params, MACs, ORT latency, sparse-phase time.

For each model (LeNet-5, VGG-style net) and channel-group sparsity (``--profile``, default
``generic-channel``), every method in ``--methods`` (wgsef, ssr-l21, ssr-l20, group-lasso, magnitude)
starts from the SAME dense model (trained once per model by the first job, then shared through
``TrainJobConfig(checkpoint=RUN/dense)``) and gets the same total epochs: ``--epochs`` sparse +
``--finetune-epochs`` fine-tune of the compact model (magnitude, a one-shot method, gets all of them as
fine-tune; the train job does that). Each run then goes through ``step_prune`` (the train job's
surgery summary; params/MACs per sample),
``step_export`` (ONNX, parity-checked) and ``step_bench`` (ONNX Runtime CPU fp32, dense and pruned
interleaved in a fresh worker, batch sizes ``--batches``). ``reached`` = nonzero groups when the
method's own sparse phase ended, before the runner's top-k projection (for SSR: rows its last
F-step left nonzero, since its finalize applies top-k itself); ``k`` = the target.

Writes ``benchmarks/results/compare_methods-<data>-<ort>-cpu-<pt>.{md,csv,env.json,png}`` (PNG:
accuracy vs batch-1 latency, one point per method, one panel per model x sparsity).

Usage: .venv/bin/python benchmarks/compare_methods.py [--data digits|fashion-mnist] [--models lenet5,vgg]
    [--sparsities 0.5,0.7] [--dense-epochs 3] [--epochs 4] [--finetune-epochs 2] [--train-limit 20000]
    [--lams wgsef=2.0,group-lasso=5e-3,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _results_io import RESULTS, md_table, ort_tag, torch_tag, write_results

from hwprune.pipeline.steps import PipelineOptions, step_bench, step_export, step_prune
from hwprune.profiles import load_profile
from hwprune.report.plots import save_figure
from hwprune.sparsity.methods import get_method
from hwprune.training.artifacts import TrainMetrics
from hwprune.training.config import TrainJobConfig
from hwprune.training.job import run_train_job

__all__ = ["main", "parse_lams"]

METHODS = "wgsef,ssr-l21,ssr-l20,group-lasso,magnitude"


def parse_lams(text: str) -> dict[str, float]:
    """``"wgsef=2,group-lasso=1e-2"`` -> {method: lambda}; methods not named use their default."""
    out: dict[str, float] = {}
    for item in (t for t in text.split(",") if t.strip()):
        name, _, val = item.partition("=")
        get_method(name.strip())  # ConfigError on an unknown method
        out[name.strip()] = float(val)
    return out


def _model_kwargs(model: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"width": args.vgg_width, "depth": args.vgg_depth} if model == "vgg" else {}


def _reached(m: TrainMetrics) -> int:
    info, g = m.method_info, m.groups
    if "f_zero_rows" in info:  # SSR: its finalize already kept top-k; report what its F-step reached
        return g.total - int(sum(info["f_zero_rows"]))
    return int(g.nonzero_before_projection)


def run_one(model: str, s: float, method: str, dense_stem: Path | None, args: argparse.Namespace,
            run_dir: Path, opts: PipelineOptions) -> dict[str, Any]:
    """Train + prune + export + bench one (model, sparsity, method); returns its table row."""
    profile = load_profile(args.profile)
    if args.ort_threads >= 0:
        profile = dataclasses.replace(profile, bench=dataclasses.replace(profile.bench, threads=args.ort_threads))
    cfg = TrainJobConfig(
        model=model, model_kwargs=_model_kwargs(model, args), data=args.data, train_limit=args.train_limit,
        profile=args.profile, sparsity=s, method=method, epochs=args.epochs, dense_epochs=args.dense_epochs,
        finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.lr,
        lam=args.lams.get(method), seed=args.seed, checkpoint=str(dense_stem) if dense_stem else None)
    t0 = time.perf_counter()
    m = run_train_job(cfg, run_dir, progress=False, profile=profile).metrics
    ps = step_prune(run_dir)
    step_export(run_dir)
    bench = step_bench(run_dir, opts)
    wall = time.perf_counter() - t0
    test, val = m.test_accuracy, m.val_accuracy
    row: dict[str, Any] = {
        "model": model, "sparsity": s, "method": method, "lam": m.lam if get_method(method).trains else "n/a",
        "acc_dense": round(100 * (test.dense or 0.0), 2), "acc": round(100 * (test.final or 0.0), 2),
        "val_before_finetune": round(100 * val.projected, 2) if val.projected is not None else None,
        "drop_pt": round(100 * ((test.dense or 0.0) - (test.final or 0.0)), 2),
        "params": ps.params["pruned"], "params_dense": ps.params["sparse"],
        "macs": ps.macs["pruned"], "macs_dense": ps.macs["sparse"],
        "k": m.groups.k, "groups_total": m.groups.total, "reached": _reached(m),
        "exact_k": m.exact_k, "epochs_sparse": m.epochs["sparse"], "epochs_finetune": m.epochs["finetune"],
        "s_sparse": round(m.seconds["sparse"], 2), "s_finetune": round(m.seconds["finetune"], 2),
        "s_wall": round(wall, 1),
    }
    for d, p in zip(bench.dense, bench.pruned, strict=True):
        row[f"dense_b{d['batch']}_ms"] = round(d["median_ms"], 4)
        row[f"lat_b{p['batch']}_ms"] = round(p["median_ms"], 4)
    print(f"{model} s={s} {method:11s} acc {row['acc']:.2f} (dense {row['acc_dense']:.2f}) reached "
          f"{row['reached']}/{row['k']} sparse {row['s_sparse']:.1f} s  lat b1 {row.get('lat_b1_ms')} ms "
          f"({wall:.0f} s)", flush=True)
    return row


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy vs batch-1 latency, one point per method (+ dense), one panel per (model, sparsity)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["sparsity"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    markers = dict(zip(METHODS.split(","), "o^vsD", strict=True))
    for ax, (model, s) in zip(axes[0], panels, strict=True):
        sel = [r for r in rows if r["model"] == model and r["sparsity"] == s]
        for r in sel:
            ax.scatter(r["lat_b1_ms"], r["acc"], marker=markers.get(r["method"], "o"), label=r["method"], zorder=3)
        ax.scatter(statistics.median(r["dense_b1_ms"] for r in sel), sel[0]["acc_dense"], marker="*", s=120,
                   color="black", label="dense", zorder=3)
        ax.set_title(f"{model}, sparsity {s:g}")
        ax.set_xlabel("ORT CPU latency, batch 1 (ms, median)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _ssr_vs_gl(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if r["method"] != "group-lasso":
            continue
        for v in ("ssr-l21", "ssr-l20"):
            o = next((x for x in rows if x["method"] == v and x["model"] == r["model"]
                      and x["sparsity"] == r["sparsity"]), None)
            if o:
                out.append(f"- {r['model']} s={r['sparsity']:g}: {v} {o['s_sparse']} s vs group-lasso "
                           f"{r['s_sparse']} s (group-lasso / {v} = {r['s_sparse'] / max(o['s_sparse'], 1e-9):.2f}x)")
    return out


COLUMNS = [("model", "model"), ("sparsity", "sparsity"), ("method", "method"), ("lam", "lambda"),
           ("acc", "acc %"), ("drop_pt", "drop pt"), ("val_before_finetune", "val. before FT %"),
           ("reached", "reached (nonzero)"), ("k", "k"), ("params", "params"), ("macs", "MACs"),
           ("lat_b1_ms", "ORT b1 ms"), ("lat_b32_ms", "ORT b32 ms"), ("dense_b1_ms", "dense b1 ms"),
           ("dense_b32_ms", "dense b32 ms"), ("s_sparse", "sparse-phase s"), ("s_finetune", "FT s")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--models", default="lenet5,vgg")
    ap.add_argument("--vgg-width", type=float, default=0.25)
    ap.add_argument("--vgg-depth", type=int, default=11)
    ap.add_argument("--sparsities", default="0.5,0.7")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--lams", default="", help="method=lambda,... (others: the method's default)")
    ap.add_argument("--profile", default="generic-channel")
    ap.add_argument("--dense-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4, help="sparse-phase epochs")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=0, help="0 = full training set")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--bench-iters", type=int, default=30)
    ap.add_argument("--bench-repeats", type=int, default=3)
    ap.add_argument("--bench-warmup", type=int, default=5)
    ap.add_argument("--ort-threads", type=int, default=1, help="ORT intra-op threads (0 = ORT default)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/hwprune-bench/compare_methods"))
    ap.add_argument("--note", default="")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.lams = parse_lams(args.lams)
    args.train_limit = args.train_limit or None
    sparsities = [float(v) for v in args.sparsities.split(",") if v]
    methods = [m for m in args.methods.split(",") if m]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    opts = PipelineOptions(bench_batch_sizes=tuple(int(b) for b in args.batches.split(",")),
                           bench_iters=args.bench_iters, bench_repeats=args.bench_repeats,
                           bench_warmup=args.bench_warmup)
    rows: list[dict[str, Any]] = []
    for model in [m for m in args.models.split(",") if m]:
        dense_stem: Path | None = None
        for s in sparsities:
            for method in methods:
                run_dir = args.work_dir / args.data / model / f"s{s:g}-{method}"
                rows.append(run_one(model, s, method, dense_stem, args, run_dir, opts))
                dense_stem = dense_stem or run_dir / "dense"
    limit = f"a stratified {args.train_limit}-image training subset" if args.train_limit else "the full training set"
    md = [f"# compare_methods: {args.data}, channel groups ({args.profile}), equal total epochs", "",
          f"Protocol: {limit}, full test set; batch {args.batch_size}, lr {args.lr}, cosine; dense "
          f"{args.dense_epochs} epochs trained once per model and shared (checkpoint); then per method "
          f"{args.epochs} sparse + {args.finetune_epochs} masked fine-tune epochs (magnitude: "
          f"{args.epochs + args.finetune_epochs} fine-tune epochs). `vgg` = VGG-{args.vgg_depth} with BN, "
          f"width x{args.vgg_width}. `reached` = nonzero groups at the end of the method's own sparse phase "
          "(before top-k projection; SSR: rows its last F-step left nonzero), `k` = target. Latency: "
          f"ONNX Runtime CPU fp32, {args.ort_threads or 'default'} intra-op thread(s), median of "
          f"{args.bench_repeats} rounds x {args.bench_iters} iterations after {args.bench_warmup} warm-up, dense "
          "and pruned interleaved in a fresh worker per run. Busy 2-core machine shared with other jobs: "
          "latencies move by 10-20 %, training times more.", ""]
    if args.note:
        md += [args.note, ""]
    md += md_table(rows, COLUMNS)
    same = [f"{mo} s={sp:g}" for mo, sp in sorted({(r["model"], r["sparsity"]) for r in rows})
            if len({(r["params"], r["macs"]) for r in rows if r["model"] == mo and r["sparsity"] == sp}) == 1]
    if same:
        md += ["", f"Identical pruned architectures (params and MACs) for every method at: {', '.join(same)} "
               "(all methods end with exactly k groups per layer scope), so latency differences between "
               "methods there are measurement noise."]
    ssr = _ssr_vs_gl(rows)
    if ssr:
        md += ["", "Sparse-phase wall time, SSR vs group lasso (same epochs; the SSR paper claims its "
               "solver is 2.5x faster than directly solving group sparsity):", "", *ssr]
    stem = args.out_dir / f"compare_methods-{args.data}-{ort_tag()}-cpu-{torch_tag()}"
    opts_rec = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_results(stem, rows, md, opts_rec)
    plot(rows, stem.with_name(stem.name + ".png"))
    print("\n".join(md))


if __name__ == "__main__":
    main()
