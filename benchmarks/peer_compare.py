"""hwprune vs Torch-Pruning at equal widths (MACs), equal epochs, from one shared dense model.

For every (model, seed) one dense model is trained and saved; every arm starts from it and gets the
same number of post-dense epochs (``--epochs``):

* hwprune ``wgsef`` (the default recipe), ``ssr-l21``, ``group-lasso``: sparse phase of
  ``--sparse-epochs`` + fine-tune of the rest; ``magnitude`` and ``random`` (k random groups per scope, the
  sanity reference, not a peer): one shot + all epochs as fine-tune
  (the train job itself; then surgery). All hwprune arms keep the same k groups per scope, hence the
  same widths.
* Torch-Pruning ``GroupMagnitudeImportance`` one shot + fine-tune, and ``GroupNormPruner`` sparse
  learning + prune + fine-tune (``_peer_arms.py``), with the per-layer ratio bisected so the compact
  MACs match hwprune's within 3 %, fine-tuned with hwprune's loop, schedule and learning rate.

Per arm: test accuracy on the full test split (evaluated once, at the end), params, MACs per sample,
ONNX Runtime CPU latency at batch 1 and 32 (dense and arm interleaved in one fresh worker process per
arm), and the post-dense training seconds. Results: ``benchmarks/results/peer_compare-<tag>.{csv,md,
env.json,png}`` (PNG: accuracy vs batch-1 latency per model and sparsity, mean over seeds).

Quick check (digits, <= 10 min on 2 cores): ``.venv/bin/python benchmarks/peer_compare.py --quick``.
Full protocol: see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _peer_arms import MAC_RTOL, TpSettings, choose_round_to, tp_groupnorm_arm, tp_magnitude_arm
from _results_io import RESULTS, md_table, ort_tag, torch_tag, write_results

from hwprune.models.complexity import count_params_and_macs
from hwprune.profiles import BenchSpec, load_profile
from hwprune.report.plots import save_figure
from hwprune.runtime.bench import compare
from hwprune.runtime.export import to_onnx
from hwprune.training.config import TrainJobConfig
from hwprune.training.loop import evaluate, fit
from hwprune.training.schedule import TrainConfig

HW_ARMS = ("wgsef", "ssr-l21", "group-lasso", "magnitude", "random")  # random: does the selection matter?
TP_ARMS = ("tp-magnitude", "tp-groupnorm")
PEERS = ("tp-magnitude", "tp-groupnorm", "magnitude", "group-lasso")  # the arms WGSEF must beat
# (summary key, header) of the mean-over-seeds table (also peer_merge's)
SUMMARY_COLUMNS = [("model", "model"), ("sparsity", "sparsity"), ("arm", "arm"), ("seeds", "seeds"), ("acc", "acc %"),
                   ("acc_spread", "spread pt"), ("acc_dense", "dense %"), ("drop_pt", "drop pt"),
                   ("params", "params"), ("macs", "MACs"), ("lat_b1_ms", "ORT b1 ms"), ("lat_b32_ms", "ORT b32 ms"),
                   ("s_train", "train s"), ("s_per_ft_epoch", "s / FT epoch"),
                   ("projection_zero_runs", "proj. removed 0")]
VGG_KW = {"width": 0.5, "depth": 11}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--quick`` replaces the protocol by a small digits run)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--models", default="lenet5,resnet20,vgg")
    p.add_argument("--sparsities", default="0.3,0.5,0.7")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--arms", default=",".join(HW_ARMS + TP_ARMS))
    p.add_argument("--train-limit", type=int, default=20000, help="stratified training subset (0: all)")
    p.add_argument("--image-size", type=int, default=0, help="resize images (0: native)")
    p.add_argument("--dense-epochs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4, help="post-dense epochs, the same for every arm")
    p.add_argument("--sparse-epochs", type=int, default=-1,
                   help="of those, sparse-phase epochs of the trained methods (-1: epochs - ceil(epochs/4))")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--profile", default="x86-avx2-ort")
    p.add_argument("--tp-reg", type=float, default=5e-4, help="GroupNormPruner reg (Torch-Pruning's recipe)")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--bench-iters", type=int, default=50)
    p.add_argument("--bench-repeats", type=int, default=3)
    p.add_argument("--ort-threads", type=int, default=1)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/hwprune-peer"))
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="", help="results file tag (default: data and protocol)")
    p.add_argument("--note", default="", help="one line about the machine (busy/quiet) for the report")
    p.add_argument("--quick", action="store_true", help="digits, 16x16, one seed, 50 %%, short schedule")
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.image_size, args.train_limit, args.seeds, args.sparsities = "digits", 16, 0, "0", "0.5"
        args.dense_epochs, args.epochs, args.batch_size, args.bench_iters, args.bench_repeats = 6, 4, 64, 20, 2
        args.tag = args.tag or "quick-digits"
    if args.sparse_epochs < 0:
        args.sparse_epochs = args.epochs - math.ceil(args.epochs / 4)
    if not 1 <= args.sparse_epochs < args.epochs:
        p.error(f"--sparse-epochs must be in [1, {args.epochs}) so every arm has a sparse phase and fine-tunes")
    return args


def _job_cfg(args: argparse.Namespace, model: str, seed: int, **kw: Any) -> TrainJobConfig:
    return TrainJobConfig(model=model, model_kwargs=VGG_KW if model == "vgg" else {}, data=args.data,
                          image_size=args.image_size or None, train_limit=args.train_limit or None,
                          profile=args.profile, batch_size=args.batch_size, lr=args.lr, seed=seed, **kw)


def train_dense(args: argparse.Namespace, model_name: str, seed: int, stem: Path) -> tuple[Any, torch.nn.Module,
                                                                                          torch.Tensor, float]:
    """Train (or reuse) the shared dense model; returns (data bundle, model, example input, seconds)."""
    from hwprune.surgery.modelio import load_model, save_model
    from hwprune.training.job import data_and_model

    cfg = _job_cfg(args, model_name, seed)
    bundle, model, example = data_and_model(cfg)
    t0 = time.perf_counter()
    if stem.with_suffix(".json").is_file():
        model.load_state_dict(load_model(stem)[0].state_dict())
    else:
        fit(model, bundle.train, None, TrainConfig(epochs=args.dense_epochs, batch_size=args.batch_size, lr=args.lr,
                                                   momentum=cfg.momentum, weight_decay=cfg.weight_decay, seed=seed,
                                                   lr_schedule="cosine", progress=False), phase="dense")
        save_model(model, stem, input_shape=tuple(example.shape[1:]), extra={"stage": "dense"})
    return bundle, model, example, time.perf_counter() - t0


def hwprune_arm(args: argparse.Namespace, model_name: str, seed: int, s: float, method: str, dense_stem: Path,
                run_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The library's own train job from the shared dense model, then surgery; returns (compact, info)."""
    from hwprune.pipeline.steps import step_prune
    from hwprune.surgery.modelio import load_model
    from hwprune.training.job import run_train_job

    # One-shot methods get the sparse-phase epochs as extra fine-tune (the job does that): total = args.epochs.
    cfg = _job_cfg(args, model_name, seed, sparsity=s, method=method, dense_epochs=0, checkpoint=str(dense_stem),
                   epochs=args.sparse_epochs, finetune_epochs=args.epochs - args.sparse_epochs)
    t0 = time.perf_counter()
    res = run_train_job(cfg, run_dir, progress=False, profile=load_profile(args.profile))
    m = res.metrics
    step_prune(run_dir)  # the job already did the surgery and fine-tuned the compact model
    compact, _ = load_model(run_dir / "pruned")
    per_epoch = math.ceil(m.splits.train / args.batch_size)  # a sparse phase that stops early hands its
    sparse_steps, ft_steps = m.steps["sparse"], m.steps["finetune"]  # remaining steps to the fine-tune
    return compact, {
        "acc_before_finetune": m.val_accuracy.projected, "s_train": time.perf_counter() - t0,
        "s_finetune": m.seconds.get("finetune", 0.0), "epochs_finetune": round(ft_steps / per_epoch, 2),
        "sparse_epochs": round(sparse_steps / per_epoch, 2), "post_epochs": (sparse_steps + ft_steps) / per_epoch,
        "zeroed_by_projection": m.groups.zeroed_by_projection, "k": m.groups.k, "lam": m.lam}


def _latency(dense_onnx: Path, model: torch.nn.Module, example: torch.Tensor, path: Path,
             spec: BenchSpec) -> dict[str, float]:
    to_onnx(model, example, path)
    res = compare(dense_onnx, path, spec)
    out: dict[str, float] = {}
    for row in res["speedup"]:
        b = row["batch"]
        out[f"lat_b{b}_ms"], out[f"dense_b{b}_ms"], out[f"speedup_b{b}"] = (
            row["pruned_median_ms"], row["dense_median_ms"], row["speedup"])
    return out


def run_point(args: argparse.Namespace, model_name: str, seed: int, s: float, bundle: Any, dense: torch.nn.Module,
              example: torch.Tensor, dense_stem: Path, dense_onnx: Path, spec: BenchSpec,
              dense_info: dict[str, Any]) -> list[dict[str, Any]]:
    """Every arm at one (model, seed, sparsity); hwprune arms first (they fix the target MACs)."""
    arms = [a for a in args.arms.split(",") if a]
    work = args.work_dir / f"{model_name}-s{seed}-p{s:g}"
    rows: list[dict[str, Any]] = []
    target: int | None = None
    block = load_profile(args.profile).alignment
    settings = TpSettings(epochs=args.epochs, sparse_epochs=args.sparse_epochs, lr=args.lr, finetune_lr=args.lr / 2,
                          momentum=0.9, weight_decay=5e-4, batch_size=args.batch_size, seed=seed, reg=args.tp_reg)
    tp_choice: tuple[int | None, float, int] | None = None
    for arm in sorted(arms, key=lambda a: (a in TP_ARMS, a)):
        if arm in HW_ARMS:
            model, info = hwprune_arm(args, model_name, seed, s, arm, dense_stem, work / arm)
        else:
            if target is None:
                raise SystemExit("Torch-Pruning arms need at least one hwprune arm (it fixes the target MACs)")
            tp_choice = tp_choice or choose_round_to(dense, example, target, block, bundle.num_classes)
            round_to, ratio, _ = tp_choice
            fn = tp_magnitude_arm if arm == "tp-magnitude" else tp_groupnorm_arm
            model, info = fn(dense, bundle, example, ratio, round_to, settings)
            info.update(tp_ratio=round(ratio, 4), tp_round_to=round_to)
        if info.get("post_epochs", info["sparse_epochs"] + info["epochs_finetune"]) != args.epochs:
            raise SystemExit(f"{arm}: {info['sparse_epochs']} + {info['epochs_finetune']} post-dense epochs, "
                             f"expected {args.epochs} (equal epochs for every arm)")
        params, macs = count_params_and_macs(model, example)
        target = target if target is not None else macs
        acc = evaluate(model, bundle.test)["accuracy"]
        row = {"model": model_name, "seed": seed, "sparsity": s, "arm": arm, "acc": round(100 * acc, 2),
               "acc_dense": dense_info["acc"], "drop_pt": round(dense_info["acc"] - 100 * acc, 2),
               "val_acc_before_ft": round(100 * (info["acc_before_finetune"] or 0.0), 2), "params": params,
               "macs": macs,
               "params_dense": dense_info["params"], "macs_dense": dense_info["macs"],
               "mac_vs_hwprune": round(macs / target, 4), "s_train": round(info["s_train"], 1),
               "s_per_ft_epoch": round(info["s_finetune"] / max(1, info["epochs_finetune"]), 2),
               "sparse_epochs": info["sparse_epochs"], "ft_epochs": info["epochs_finetune"],
               "zeroed_by_projection": info.get("zeroed_by_projection", ""), "tp_ratio": info.get("tp_ratio", ""),
               "tp_round_to": info.get("tp_round_to", ""), "lam": info.get("lam", "")}
        row.update(_latency(dense_onnx, model, example, work / f"{arm}.onnx", spec))
        print(f"{model_name} seed {seed} s={s:g} {arm:13s} acc {row['acc']:.2f} (dense {row['acc_dense']:.2f}) "
              f"MACs {macs} ({row['mac_vs_hwprune']:.3f}x hwprune) b1 {row.get('lat_b1_ms', 0):.4f} ms "
              f"train {row['s_train']:.0f} s", flush=True)
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (model, sparsity, arm), with the spread (max - min) of the accuracy."""
    out = []
    for key in sorted({(r["model"], r["sparsity"], r["arm"]) for r in rows}):
        sel = [r for r in rows if (r["model"], r["sparsity"], r["arm"]) == key]
        mean = {c: statistics.fmean(float(r[c]) for r in sel) for c in
                ("acc", "acc_dense", "drop_pt", "macs", "lat_b1_ms", "lat_b32_ms", "s_train", "s_per_ft_epoch")
                if all(isinstance(r.get(c), (int, float)) for r in sel)}
        accs = [r["acc"] for r in sel]
        zero_proj = [r["zeroed_by_projection"] for r in sel if isinstance(r["zeroed_by_projection"], int)]
        out.append({"model": key[0], "sparsity": key[1], "arm": key[2], "seeds": len(sel), **mean,
                    "acc_spread": max(accs) - min(accs), "params": sel[0]["params"],
                    "projection_zero_runs": f"{sum(z == 0 for z in zero_proj)}/{len(zero_proj)}" if zero_proj else ""})
    return out


def verdicts(summary: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked on the measured means (one line each)."""
    lines = []
    for model, s in sorted({(r["model"], r["sparsity"]) for r in summary}):
        by = {r["arm"]: r for r in summary if r["model"] == model and r["sparsity"] == s}
        if "wgsef" not in by:
            continue
        peers = [(a, by[a]["acc"]) for a in PEERS if a in by]
        best = max(peers, key=lambda t: t[1]) if peers else None
        ok = best is None or by["wgsef"]["acc"] >= best[1]
        tail = f"best peer {best[0]} {best[1]:.2f} %" if best else "no peer arm"
        verdict = "meets" if ok else "misses"
        lines.append(f"- {model} s={s:g}: wgsef {by['wgsef']['acc']:.2f} % vs {tail} -> {verdict} "
                     f"'wgsef >= best peer'; drop vs dense {by['wgsef']['drop_pt']:.2f} pt")
    w = [r for r in rows if r["arm"] == "wgsef" and isinstance(r["zeroed_by_projection"], int)]
    if w:
        lines.append(f"- projection removed 0 groups in {sum(r['zeroed_by_projection'] == 0 for r in w)} of {len(w)} "
                     "wgsef runs (target >= 90 %)")
    for model, s in sorted({(r["model"], r["sparsity"]) for r in summary}):
        by = {r["arm"]: r for r in summary if r["model"] == model and r["sparsity"] == s}
        if {"wgsef", "magnitude"} <= set(by):
            lines.append(f"- {model} s={s:g}: training time wgsef / magnitude = "
                         f"{by['wgsef']['s_train'] / max(1e-9, by['magnitude']['s_train']):.2f}x (target <= 1.15x)")
        if {"wgsef", "tp-magnitude"} <= set(by) and by["tp-magnitude"].get("s_per_ft_epoch"):
            ratio = by["wgsef"]["s_per_ft_epoch"] / by["tp-magnitude"]["s_per_ft_epoch"]
            lines.append(f"- {model} s={s:g}: fine-tune epoch hwprune / Torch-Pruning = {ratio:.2f}x (target <= 1.1x)")
    return lines


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    """Accuracy vs batch-1 latency (mean over seeds), one panel per (model, sparsity)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["sparsity"]) for r in summary})
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.4 * cols, 3.6 * rows_n), squeeze=False)
    shapes = "o^vsxDPh*"
    markers = {arm: shapes[i % len(shapes)] for i, arm in enumerate(HW_ARMS + TP_ARMS)}
    for ax, (model, s) in zip(axes.flat, panels, strict=False):
        for r in (r for r in summary if r["model"] == model and r["sparsity"] == s and "lat_b1_ms" in r):
            ax.scatter(r["lat_b1_ms"], r["acc"], marker=markers.get(r["arm"], "o"), label=r["arm"], zorder=3)
        ax.set_title(f"{model}, {100 * s:g} % of groups removed")
        ax.set_xlabel("ORT CPU latency, batch 1 (ms)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    """Run the protocol and write the results files."""
    args = parse_args(argv)
    spec = BenchSpec(batch_sizes=tuple(int(b) for b in args.batches.split(",")), warmup=5, iters=args.bench_iters,
                     repeats=args.bench_repeats, threads=max(0, args.ort_threads))
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for model_name in args.models.split(","):
        for seed in (int(x) for x in args.seeds.split(",")):
            stem = args.work_dir / f"{model_name}-s{seed}-dense" / "dense"
            bundle, dense, example, dense_s = train_dense(args, model_name, seed, stem)
            p, mc = count_params_and_macs(dense, example)
            dense_info = {"acc": round(100 * evaluate(dense, bundle.test)["accuracy"], 2), "params": p, "macs": mc}
            dense_onnx = to_onnx(dense, example, stem.parent / "dense.onnx")
            print(f"{model_name} seed {seed}: dense {dense_info['acc']:.2f} % ({dense_s:.0f} s)", flush=True)
            for s in (float(x) for x in args.sparsities.split(",")):
                rows.extend(run_point(args, model_name, seed, s, bundle, dense, example, stem, dense_onnx, spec,
                                      dense_info))
    summary = summarize(rows)
    tag = args.tag or f"{args.data}-{args.train_limit or 'full'}-d{args.dense_epochs}e{args.epochs}"
    stem = args.out_dir / f"peer_compare-{tag}-{ort_tag()}-cpu-{torch_tag()}"
    md = [f"# peer_compare: {args.data}, profile {args.profile}, equal widths (MACs within {100 * MAC_RTOL:g} %) "
          "and equal epochs", "",
          f"Protocol: training subset {args.train_limit or 'all'} images (stratified), full test split evaluated once "
          f"at the end; dense {args.dense_epochs} epochs (one shared model per model and seed), then "
          f"{args.epochs} post-dense epochs for every arm ({args.sparse_epochs} sparse + "
          f"{args.epochs - args.sparse_epochs} fine-tune for trained methods; one-shot arms fine-tune all "
          f"{args.epochs}); batch {args.batch_size}, lr {args.lr} (fine-tune lr {args.lr / 2}), cosine, momentum 0.9, "
          f"weight decay 5e-4. VGG = VGG-11-BN width 0.5. Torch-Pruning: per-layer ratio bisected to hwprune's MACs, "
          f"round_to = the profile block when that matches, GroupNormPruner reg {args.tp_reg}. Latency: ONNX Runtime "
          f"CPU fp32, {args.ort_threads} thread(s), median of {args.bench_repeats} rounds x {args.bench_iters} "
          f"iterations, dense and arm interleaved in a fresh worker. Seeds {args.seeds}. Wall time "
          f"{(time.perf_counter() - t_start) / 60:.0f} min. {args.note}", "",
          "## Mean over seeds", "", *md_table(summary, SUMMARY_COLUMNS), "",
          "## Targets", "", *verdicts(summary, rows), "",
          "## Every run", "", *md_table(rows, [(k, k) for k in rows[0]] if rows else [])]
    write_results(stem, rows, md, vars(args) | {"work_dir": str(args.work_dir), "out_dir": str(args.out_dir)})
    plot(summary, stem.with_name(stem.name + ".png"))
    print("\n".join(verdicts(summary, rows)))
    print(f"written: {stem}.{{csv,md,env.json,png}}")


if __name__ == "__main__":
    main()
