"""Accuracy vs channel-group sparsity for LeNet-5 and a VGG-style net (WGSEF, one dense model per net).

For every model, the first sparsity's job trains the dense model (``--dense-epochs``); every other
sparsity starts from that saved dense model (``TrainJobConfig(checkpoint=RUN/dense)``), so all points
share one dense network. Each job: WGSEF sparse phase (``--epochs``) -> top-k projection -> surgery ->
fine-tune of the compact model (``--finetune-epochs``) with the ``--profile`` channel groups (default
``generic-channel``); ``step_prune`` reads the surgery summary for params/MACs. Columns: dense and
final test accuracy (each measured once, at the end of the job), drop in points, validation accuracy
right after the projection,
groups kept (k) vs nonzero after the job and before the projection, ``nonzero == k`` in every scope,
params/MACs per sample before/after surgery, wall time per phase.

Target (reported, not enforced): at 50 % sparsity the sparse accuracy is <= 0.3 points below dense.
Writes ``benchmarks/results/sparsity_sweep-<data>.{md,csv,env.json}``.

Usage: .venv/bin/python benchmarks/sparsity_sweep.py [--data fashion-mnist] [--models lenet5,vgg]
    [--sparsities 0.3,0.5,0.7] [--dense-epochs 3] [--epochs 4] [--finetune-epochs 2] [--train-limit 20000]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch
from _results_io import RESULTS, md_table, write_results

from hwprune.pipeline.steps import step_prune
from hwprune.training.config import TrainJobConfig
from hwprune.training.job import run_train_job

__all__ = ["main", "model_kwargs"]


def model_kwargs(model: str, vgg_width: float, vgg_depth: int) -> dict[str, Any]:
    """Constructor options for ``model`` (only ``vgg`` takes any here)."""
    return {"width": vgg_width, "depth": vgg_depth} if model == "vgg" else {}


def pct(v: float | None) -> float | None:
    """A fraction as a percentage with two decimals (None stays None)."""
    return round(100 * v, 2) if v is not None else None


def _limit(model: str, args: argparse.Namespace) -> int | None:
    if model == "vgg" and args.vgg_train_limit is not None:
        return args.vgg_train_limit or None
    return args.train_limit


def run_model(model: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """All sparsities of one model; the first job trains the shared dense model."""
    rows: list[dict[str, Any]] = []
    dense_stem: Path | None = None
    for s in args.sparsities:
        cfg = TrainJobConfig(
            model=model, model_kwargs=model_kwargs(model, args.vgg_width, args.vgg_depth), data=args.data,
            train_limit=_limit(model, args), profile=args.profile, sparsity=s, method="wgsef", epochs=args.epochs,
            dense_epochs=args.dense_epochs, finetune_epochs=args.finetune_epochs, batch_size=args.batch_size,
            lr=args.lr, lam=args.lam, seed=args.seed, checkpoint=str(dense_stem) if dense_stem else None)
        run_dir = work / model / f"s{s:g}"
        t0 = time.perf_counter()
        m = run_train_job(cfg, run_dir, progress=False).metrics
        t_train = time.perf_counter() - t0
        ps = step_prune(run_dir)  # the train job did the surgery: this reads its summary
        wall = time.perf_counter() - t0
        if dense_stem is None:
            dense_stem = run_dir / "dense"
        g, test, val = m.groups, m.test_accuracy, m.val_accuracy
        rows.append({
            "model": model, "sparsity": s, "acc_dense": pct(test.dense), "acc_sparse": pct(test.final),
            "drop_pt": round(100 * ((test.dense or 0.0) - (test.final or 0.0)), 2),
            "val_before_finetune": pct(val.projected), "final_stage": m.final_stage,
            "groups_total": g.total, "k": g.k, "nonzero": g.nonzero,
            "nonzero_before_projection": g.nonzero_before_projection,
            "zeroed_by_projection": g.zeroed_by_projection, "exact_k": m.exact_k,
            "params_dense": ps.params["sparse"], "params_pruned": ps.params["pruned"],
            "macs_dense": ps.macs["sparse"], "macs_pruned": ps.macs["pruned"],
            "mac_reduction": round(ps.macs["sparse"] / max(1, ps.macs["pruned"]), 3),
            "s_dense": round(m.seconds["dense"], 1), "s_sparse": round(m.seconds["sparse"], 1),
            "s_finetune": round(m.seconds["finetune"], 1), "s_wall": round(wall, 1),
            "s_train_job": round(t_train, 1), "lam": m.lam,
        })
        print(f"{model} s={s}: dense {rows[-1]['acc_dense']} sparse {rows[-1]['acc_sparse']} "
              f"drop {rows[-1]['drop_pt']} pt, nonzero {g.nonzero}/{g.k} (before proj "
              f"{g.nonzero_before_projection}), {wall:.0f} s", flush=True)
    return rows


COLUMNS = [("model", "model"), ("sparsity", "sparsity"), ("acc_dense", "dense %"), ("acc_sparse", "sparse %"),
           ("drop_pt", "drop pt"), ("val_before_finetune", "val. before FT %"), ("groups_total", "groups"),
           ("k", "k"), ("nonzero", "nonzero"), ("nonzero_before_projection", "nonzero before proj."),
           ("exact_k", "nonzero==k all scopes"), ("params_dense", "params dense"),
           ("params_pruned", "params pruned"), ("macs_dense", "MACs dense"), ("macs_pruned", "MACs pruned"),
           ("s_dense", "dense s"), ("s_sparse", "sparse s"), ("s_finetune", "FT s"), ("s_wall", "wall s")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--models", default="lenet5,vgg")
    ap.add_argument("--vgg-width", type=float, default=0.25)
    ap.add_argument("--vgg-depth", type=int, default=11)
    ap.add_argument("--sparsities", default="0.3,0.5,0.7")
    ap.add_argument("--profile", default="generic-channel")
    ap.add_argument("--dense-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4, help="WGSEF sparse-phase epochs")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=20000, help="0 = full training set")
    ap.add_argument("--vgg-train-limit", type=int, default=None, help="vgg only (default: --train-limit)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--lam", type=float, default=None, help="WGSEF lambda (default: the method's default_lam)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/hwprune-bench/sparsity_sweep"),
                    help="run directories (not committed)")
    ap.add_argument("--note", default="")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.sparsities = [float(v) for v in args.sparsities.split(",") if v]
    args.train_limit = args.train_limit or None
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    rows: list[dict[str, Any]] = []
    for model in [m for m in args.models.split(",") if m]:
        rows += run_model(model, args, args.work_dir / args.data)
    limit = f"a stratified {args.train_limit}-image subset of the training set" if args.train_limit else \
        "the full training set"
    if args.vgg_train_limit is not None and "vgg" in args.models:
        limit += f" ({args.vgg_train_limit or 'all'} images for vgg)"
    md = [f"# sparsity_sweep: accuracy vs channel-group sparsity ({args.data}, WGSEF, {args.profile})", "",
          f"Protocol: {limit}, full test set; batch {args.batch_size}, lr {args.lr}, cosine schedule; "
          f"dense {args.dense_epochs} epochs (trained once per model, shared by all sparsities via "
          f"`checkpoint`), WGSEF {args.epochs} epochs (lam {rows[0]['lam'] if rows else args.lam}), top-k "
          f"projection, masked fine-tune {args.finetune_epochs} epochs. `vgg` = VGG-{args.vgg_depth} with BN, "
          f"width x{args.vgg_width}. Accuracies in %, drop in points (dense - sparse). `nonzero before proj.` "
          "= nonzero groups when the WGSEF phase ended (k = the target). Params/MACs per sample after "
          "`step_prune` surgery. Wall times on a busy 2-core machine (shared with other jobs).", ""]
    if args.note:
        md += [args.note, ""]
    md += md_table(rows, COLUMNS)
    at50 = [r for r in rows if abs(r["sparsity"] - 0.5) < 1e-9]
    if at50:
        md += ["", "Target at 50 %: drop <= 0.3 pt: " + "; ".join(
            f"{r['model']} {r['drop_pt']} pt ({'met' if r['drop_pt'] <= 0.3 else 'NOT met'})" for r in at50)]
    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_results(args.out_dir / f"sparsity_sweep-{args.data}", rows, md, opts)
    print("\n".join(md))


if __name__ == "__main__":
    main()
