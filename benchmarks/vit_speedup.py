"""Measured ORT-CPU speed-up of ViTs with 50 % of their heads and 50 % of their MLP blocks removed.

Target (issue 12): measured speed-up >= 0.8 x the MAC reduction at batch 32.

For each ViT-style model (default: hwprune's ``vit_tiny`` at the DeiT-Tiny/S shapes below; with
``--torchvision``, also torchvision's ``vit_b_16`` at ``--tv-size``), random weights:

1. ``build_groups`` under ``--profile`` (default ``x86-avx2-ort``: whole heads, MLP hidden width in
   blocks of 16, residual stream dense);
2. zero half of the head groups of every attention module and half of the MLP-block groups of
   every MLP (``round(0.5 * m_s)``, seeded), nothing else;
3. ``remove_zero_groups`` (equivalence check), export dense and compact to ONNX, time both with
   ``hwprune.runtime.bench.compare`` (one fresh worker, interleaved rounds, fresh ORT session per
   round) at batch 1 and 32.

Reported: params, MACs per sample (``count_macs``: every matrix product incl. attention), MAC
reduction, median latencies, speed-up, speed-up / MAC reduction. Writes
``benchmarks/results/vit_speedup-ort<ver>-cpu-pt<ver>.{md,csv,env.json}``.

Usage: .venv/bin/python benchmarks/vit_speedup.py [--configs deit_tiny,deit_small] [--torchvision]
       [--iters 10] [--repeats 3] [--warmup 3] [--threads 1] [--note TEXT]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.groups import GroupSet, build_groups
from hwprune.models import count_params_and_macs, create_model
from hwprune.profiles import BenchSpec, load_profile
from hwprune.runtime.bench import compare
from hwprune.runtime.export import to_onnx
from hwprune.surgery.remove import remove_zero_groups

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_io import RESULTS, md_table, ort_tag, torch_tag, write_results  # noqa: E402

# name -> (vit_tiny kwargs, input size): DeiT-Tiny/-Small widths (Touvron et al. 2021) on 3x224x224, 16x16 patches.
CONFIGS: dict[str, tuple[dict[str, Any], int]] = {
    "deit_tiny": ({"patch": 16, "dim": 192, "depth": 12, "heads": 3}, 224),
    "deit_tiny_6h": ({"patch": 16, "dim": 192, "depth": 12, "heads": 6}, 224),
    "deit_small": ({"patch": 16, "dim": 384, "depth": 12, "heads": 6}, 224),
}


def zero_heads_and_mlp(gs: GroupSet, fraction: float, seed: int) -> dict[str, int]:
    """Zero ``round(fraction * m_s)`` groups of every head scope and every MLP-block scope (seeded by name)."""
    kinds = {e.first: ("head" if e.kind == "head" else "mlp" if e.granularity.startswith("mlp_block") else "")
             for e in gs.entries}
    ids: list[int] = []
    counts = {"head": 0, "mlp": 0, "head_total": 0, "mlp_total": 0}
    for e in gs.entries:
        kind = kinds[e.first]
        if not kind:
            continue
        n = round(fraction * e.count)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(e.name.encode()))
        ids += [e.first + int(i) for i in torch.randperm(e.count, generator=gen)[:n]]
        counts[kind] += n
        counts[kind + "_total"] += e.count
    gs.zero_(sorted(ids))
    return counts


def _models(args: argparse.Namespace) -> list[tuple[str, nn.Module, int]]:
    out = []
    for name in args.configs:
        kw, size = CONFIGS[name]
        torch.manual_seed(args.seed)
        out.append((name, create_model("vit_tiny", num_classes=10, input_size=size, **kw).eval(), size))
    if args.torchvision:
        from hwprune.models.torchvision_zoo import build
        out.append((f"tv_vit_b_16@{args.tv_size}", build("vit_b_16", input_size=args.tv_size, seed=args.seed),
                    args.tv_size))
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """All models; one ``compare`` call (both batch sizes) per model."""
    spec = BenchSpec(batch_sizes=tuple(args.batches), warmup=args.warmup, iters=args.iters, repeats=args.repeats,
                     threads=args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vit_speedup-") as d:
        tmp = Path(d)
        for name, dense, size in _models(args):
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
            params, macs = count_params_and_macs(dense, x)
            model = copy.deepcopy(dense)
            gs = build_groups(model, load_profile(args.profile), x)
            counts = zero_heads_and_mlp(gs, args.fraction, args.seed)
            compact, plan = remove_zero_groups(model, gs, x)
            c_params, c_macs = count_params_and_macs(compact, x)
            dense_onnx, compact_onnx = to_onnx(dense, x, tmp / f"{name}-dense.onnx"), to_onnx(
                compact, x, tmp / f"{name}-compact.onnx")
            res = compare(dense_onnx, compact_onnx, spec, timeout_s=args.timeout)
            for sp in res["speedup"]:
                mac_red = macs / c_macs
                row = {"model": name, "input": size, "batch": sp["batch"], "heads_removed": counts["head"],
                       "heads": counts["head_total"], "mlp_blocks_removed": counts["mlp"],
                       "mlp_blocks": counts["mlp_total"], "params_dense": params, "params_compact": c_params,
                       "gmacs_dense": round(macs / 1e9, 4), "gmacs_compact": round(c_macs / 1e9, 4),
                       "mac_reduction": round(mac_red, 3), "dense_ms": round(sp["dense_median_ms"], 3),
                       "compact_ms": round(sp["pruned_median_ms"], 3), "speedup": round(sp["speedup"], 3),
                       "efficiency": round(sp["speedup"] / mac_red, 3),
                       "equivalence_max_abs": max(r.get("max_abs", 0.0) for r in plan.equivalence)}
                rows.append(row)
                print(f"{name:18s} b={row['batch']:<3d} MACs x{row['mac_reduction']:.2f}  {row['dense_ms']:9.2f} -> "
                      f"{row['compact_ms']:9.2f} ms  speed-up {row['speedup']:.2f}  eff {row['efficiency']:.2f}",
                      flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse options, run, write the result files."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="deit_tiny_6h,deit_small", help=f"from {', '.join(CONFIGS)}")
    ap.add_argument("--torchvision", action="store_true", help="also torchvision's vit_b_16 (needs torchvision)")
    ap.add_argument("--tv-size", type=int, default=112)
    ap.add_argument("--profile", default="x86-avx2-ort")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.batches = [int(b) for b in args.batches.split(",")]
    t0 = time.perf_counter()
    rows = run(args)
    cols = [("model", "model"), ("input", "input"), ("batch", "batch"), ("heads_removed", "heads removed"),
            ("heads", "heads"), ("mlp_blocks_removed", "MLP blocks removed"), ("mlp_blocks", "MLP blocks"),
            ("params_dense", "params"), ("params_compact", "params compact"), ("gmacs_dense", "GMACs"),
            ("gmacs_compact", "GMACs compact"), ("mac_reduction", "MAC red. x"), ("dense_ms", "dense ms"),
            ("compact_ms", "compact ms"), ("speedup", "speed-up x"), ("efficiency", "speed-up / MAC red.")]
    b32 = [r for r in rows if r["batch"] == 32]
    verdict = ", ".join(f"{r['model']} {r['efficiency']:.2f}" for r in b32)
    md = ["# vit_speedup: ViTs with 50 % of heads and 50 % of MLP blocks removed (ORT CPU EP)", "",
          f"Profile {args.profile} (whole heads; MLP hidden width in blocks); residual stream dense. ORT CPU EP fp32, "
          f"{args.threads} intra-op thread(s), median of {args.repeats} rounds x {args.iters} iterations (warm-up "
          f"{args.warmup}), dense and compact interleaved in one fresh worker. MACs per sample count every matrix "
          "product (projections, q k^T, attn v, MLP, patch embedding).",
          f"Target: speed-up / MAC reduction >= 0.8 at batch 32. Measured at batch 32: {verdict}.",
          f"Wall {time.perf_counter() - t0:.0f} s. {args.note}", "", *md_table(rows, cols)]
    write_results(RESULTS / f"vit_speedup-{ort_tag()}-cpu-{torch_tag()}", rows, md, vars(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
