"""Fine-tune cost: the compact model after surgery vs the masked full-width model, same job otherwise.

One dense model per (model, dataset) is trained once; two train jobs start from it with the same
seed, sparsity, method and epochs and differ only in ``compact_finetune`` (True: surgery right after
the projection, the fine-tune trains the compact model; False: the fine-tune trains the masked
full-width model, then ``step_prune`` does the surgery). Columns: fine-tune seconds per epoch
(median over the epochs of ``train_log.jsonl``, training + validation), the ratio masked / compact,
params trained in the fine-tune, final test accuracy of both (the compact fine-tune computes the
masked one's function, so they should agree up to float rounding and dropout draws).

Writes ``benchmarks/results/finetune_cost-<data>-cpu-pt<ver>.{md,csv,env.json}``.

Usage: .venv/bin/python benchmarks/finetune_cost.py [--data digits] [--models resnet20,vgg]
    [--image-size 32] [--train-limit 1000] [--finetune-epochs 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _results_io import RESULTS, md_table, torch_tag, write_results

from hwprune.pipeline.steps import step_prune
from hwprune.training.config import TrainJobConfig
from hwprune.training.job import run_train_job

__all__ = ["main"]

COLUMNS = [("model", "model"), ("sparsity", "sparsity"), ("finetune", "fine-tune on"),
           ("params_trained", "params trained"), ("s_epoch", "s / FT epoch (median)"), ("ratio", "masked / compact"),
           ("s_finetune", "FT s total"), ("acc_dense", "dense test %"), ("acc_final", "final test %")]


def _epoch_seconds(run_dir: Path) -> list[float]:
    records = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines() if x.strip()]
    return [float(r["seconds"]) for r in records if r.get("phase") == "finetune"]


def run_model(model: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The dense model once, then the compact and the masked fine-tune from it."""
    rows: list[dict[str, Any]] = []
    dense: Path | None = None
    for compact in (True, False):
        cfg = TrainJobConfig(model=model, model_kwargs={"width": args.vgg_width} if model == "vgg" else {},
                             data=args.data, image_size=args.image_size, train_limit=args.train_limit or None,
                             profile=args.profile, sparsity=args.sparsity, method=args.method,
                             epochs=args.epochs, dense_epochs=args.dense_epochs, finetune_epochs=args.finetune_epochs,
                             batch_size=args.batch_size, seed=args.seed, compact_finetune=compact,
                             checkpoint=str(dense) if dense else None)
        run_dir = work / model / ("compact" if compact else "masked")
        res = run_train_job(cfg, run_dir, progress=False)
        dense = dense or run_dir / "dense"
        if not compact:
            step_prune(run_dir)
        secs = _epoch_seconds(run_dir)
        m = res.metrics
        rows.append({"model": model, "sparsity": args.sparsity, "finetune": "compact" if compact else "masked",
                     "params_trained": sum(p.numel() for p in res.model.parameters()),
                     "s_epoch": round(statistics.median(secs), 3), "s_finetune": round(m.seconds["finetune"], 2),
                     "acc_dense": round(100 * (m.test_accuracy.dense or 0.0), 2),
                     "acc_final": round(100 * (m.test_accuracy.final or 0.0), 2), "epoch_seconds": secs})
        print(json.dumps(rows[-1]), flush=True)
    rows[1]["ratio"] = round(rows[1]["s_epoch"] / rows[0]["s_epoch"], 3)
    rows[0]["ratio"] = 1.0
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--models", default="resnet20,vgg")
    ap.add_argument("--vgg-width", type=float, default=0.25)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--train-limit", type=int, default=0, help="0 = the whole training split")
    ap.add_argument("--profile", default="x86-avx2-ort")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--method", default="magnitude", help="the selection does not change the cost; magnitude "
                    "needs no sparse phase")
    ap.add_argument("--dense-epochs", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/hwprune-bench/finetune_cost"))
    ap.add_argument("--note", default="")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for model in [m for m in args.models.split(",") if m]:
        rows += run_model(model, args, args.work_dir / args.data)
    ft_epochs = args.finetune_epochs + (args.epochs if args.method == "magnitude" else 0)
    md = [f"# finetune_cost: fine-tune of the compact vs the masked model ({args.data}, {args.profile})", "",
          f"Protocol: {args.data} at {args.image_size}x{args.image_size}, "
          f"{'all' if not args.train_limit else args.train_limit} training images (10 % held out for "
          f"validation), batch {args.batch_size}, {args.threads} torch thread(s); one dense model per net "
          f"({args.dense_epochs} epochs), then method {args.method} at sparsity {args.sparsity} and {ft_epochs} "
          "fine-tune epochs, once on the compact model after surgery and once on the masked full-width model "
          "(same seed). Seconds per fine-tune epoch include the validation pass.", ""]
    if args.note:
        md += [args.note, ""]
    md += md_table(rows, COLUMNS)
    md += ["", f"Wall time {time.perf_counter() - t0:.0f} s."]
    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_results(args.out_dir / f"finetune_cost-{args.data}-cpu-{torch_tag()}", rows, md, opts)
    print("\n".join(md))


if __name__ == "__main__":
    main()
