"""Measured ORT-CPU speed-up of surgery-compacted models vs their MAC reduction.

For ResNet-20, VGG-11 (``vgg``) and MobileNetV2 (input 3x32x32, 10 classes) and each target
fraction of channel groups removed (default 30/50/70 %):

1. build the structured groups of a hardware profile (default ``x86-avx2-ort``: blocks of 8);
2. zero a random subset of each layer's groups via ``GroupSet.zero_``: layer ``s`` loses
   ``round(r_s * m_s)`` of its ``m_s`` groups, ``r_s = target + U(-jitter, jitter)`` seeded by the
   layer name, so different profiles get the same per-layer fractions and the widths differ
   from layer to layer as after real training (weights are random: only runtime matters here);
3. ``surgery.remove_zero_groups`` (checks equivalence), export dense and compact to ONNX
   (opset 17, dynamic batch) and time both with ``hwprune.runtime.bench.compare`` (one fresh worker,
   dense and compact interleaved round by round, fresh ORT session per round) at batch 1 and 32.

Reported per point: params, MACs per sample, MAC reduction (dense MACs / compact MACs), median
latency dense vs compact, measured speed-up (dense / compact median) and efficiency = speed-up /
MAC reduction (1.0 = the runtime realises the whole MAC reduction), plus the share of conv/linear
layers whose width is a multiple of 8. At the 50 % point the profiles ``generic-channel`` (single
channels, unaligned widths), ``x86-avx2-ort`` (8), ``x86-avx512-ort`` (16), ``x86-openvino`` (8) and
every ``--calibrated`` profile (written by ``hwprune profile calibrate`` on this machine) are compared.
Every point is timed on each runtime of ``--runtimes`` (ONNX Runtime CPU EP, and OpenVINO's CPU device
when installed) from the same ONNX files: the ``runtime`` column.

Writes ``benchmarks/results/speedup_bench-ort<ver>-cpu-pt<ver>.{md,csv,env.json}`` and prints the
table. CPU timings on a shared machine are noisy; re-run on a quiet machine with e.g.
``python benchmarks/speedup_bench.py --iters 200 --repeats 5 --warmup 20``.

Usage: python benchmarks/speedup_bench.py [--models resnet20,vgg,mobilenetv2] [--fractions 0.3,0.5,0.7]
       [--calibrated A.yaml,B.yaml] [--runtimes onnxruntime,openvino]
       [--iters 30] [--repeats 3] [--warmup 5] [--threads 1] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import logging
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.base.files import atomic_write_json, atomic_write_text
from hwprune.groups import GroupSet, build_groups
from hwprune.models import count_params_and_macs, create_model
from hwprune.profiles import BenchSpec, load_profile
from hwprune.runtime.bench import compare
from hwprune.runtime.envinfo import collect_env
from hwprune.runtime.export import to_onnx
from hwprune.surgery.remove import remove_zero_groups

__all__ = ["main", "run", "zero_fraction"]

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet20", "vgg", "mobilenetv2")
FRACTIONS = (0.3, 0.5, 0.7)
MAIN_PROFILE = "x86-avx2-ort"
ALIGN_PROFILES = ("generic-channel", "x86-avx2-ort", "x86-avx512-ort", "x86-openvino")
ALIGN_FRACTION = 0.5
INPUT = (3, 32, 32)
MAX_FRACTION = 0.95  # per-layer fraction cap (surgery keeps one group of a set anyway)


def zero_fraction(gs: GroupSet, target: float, *, jitter: float, seed: int) -> float:
    """Zero ``round(r_s * m_s)`` random removable groups of every scope; returns the fraction zeroed.

    ``r_s = clip(target + U(-jitter, jitter), 0, MAX_FRACTION)`` is drawn from a generator seeded
    by ``seed`` and the scope's name, so every profile sees the same per-layer fractions.
    """
    names = gs.scope_names
    removable = gs.removable
    zero_ids: list[int] = []
    total = 0
    for s in range(gs.num_scopes):
        members = torch.nonzero((gs.scope_index == s) & removable).flatten()
        if members.numel() == 0:
            continue
        total += members.numel()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(names[s].encode()))
        r = float(target) + jitter * (2.0 * float(torch.rand((), generator=gen)) - 1.0)
        r = min(max(r, 0.0), MAX_FRACTION)
        n = round(r * members.numel())
        zero_ids.extend(int(i) for i in members[torch.randperm(members.numel(), generator=gen)[:n]])
    gs.zero_(sorted(zero_ids))
    return len(zero_ids) / max(total, 1)


def _aligned_share(model: nn.Module, block: int = 8) -> float:
    widths = [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
              for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(w % block == 0 for w in widths) / max(len(widths), 1)


def _point(name: str, dense: nn.Module, dense_onnx: Path, profile: str, frac: float, args: argparse.Namespace,
           specs: dict[str, BenchSpec], tmp: Path, dense_pm: tuple[int, int]) -> list[dict[str, Any]]:
    x = torch.randn(1, *INPUT, generator=torch.Generator().manual_seed(0))
    model = copy.deepcopy(dense).eval()
    prof = load_profile(profile)
    gs = build_groups(model, prof, x)
    removed = zero_fraction(gs, frac, jitter=args.jitter, seed=args.seed)
    t0 = time.perf_counter()
    compact, plan = remove_zero_groups(model, gs, x)
    surgery_s = time.perf_counter() - t0
    params, macs = count_params_and_macs(compact, x)
    path = to_onnx(compact, x, tmp / f"{name}-{prof.name}-{int(round(frac * 100))}.onnx")
    rows = []
    for runtime, spec in specs.items():
        res = compare(dense_onnx, path, spec, timeout_s=args.timeout)
        for sp, d, p in zip(res["speedup"], res["dense"], res["pruned"], strict=True):
            mac_red = dense_pm[1] / macs
            rows.append({
                "model": name, "profile": prof.name, "runtime": runtime, "target_removed": frac,
                "groups_removed": round(removed, 3),
                "batch": sp["batch"], "params_dense": dense_pm[0], "params_compact": params,
                "macs_dense_M": round(dense_pm[1] / 1e6, 2), "macs_compact_M": round(macs / 1e6, 2),
                "mac_reduction": round(mac_red, 3), "dense_ms": round(sp["dense_median_ms"], 4),
                "compact_ms": round(sp["pruned_median_ms"], 4), "speedup": round(sp["speedup"], 3),
                "efficiency": round(sp["speedup"] / mac_red, 3), "aligned8": round(_aligned_share(compact), 2),
                "dense_p90_ms": round(d["p90_ms"], 4), "compact_p90_ms": round(p["p90_ms"], 4),
                "surgery_s": round(surgery_s, 2), "steps": len(plan.steps),
            })
    return rows


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """All (model, profile, fraction) points; one ``compare`` call (both batch sizes) per point."""
    specs = {rt: BenchSpec(backend=rt, batch_sizes=tuple(args.batches), warmup=args.warmup,  # type: ignore[arg-type]
                           iters=args.iters, repeats=args.repeats, threads=args.threads) for rt in args.runtimes}
    rows: list[dict[str, Any]] = []
    x = torch.randn(1, *INPUT, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="speedup_bench-") as d:
        tmp = Path(d)
        for name in args.models:
            torch.manual_seed(args.seed)
            dense = create_model(name, num_classes=10, input_size=INPUT[1]).eval()
            dense_pm = count_params_and_macs(dense, x)
            dense_onnx = to_onnx(dense, x, tmp / f"{name}-dense.onnx")
            points = [(MAIN_PROFILE, f) for f in args.fractions]
            points += [(p, ALIGN_FRACTION) for p in [*args.align_profiles, *args.calibrated]
                       if (p, ALIGN_FRACTION) not in points]
            for profile, frac in points:
                new = _point(name, dense, dense_onnx, profile, frac, args, specs, tmp, dense_pm)
                for r in new:
                    print(f"{r['model']:12s} {r['profile']:16s} {r['runtime']:11s} {r['target_removed']:.0%} "
                          f"b={r['batch']:<3d} "
                          f"MACs x{r['mac_reduction']:.2f}  {r['dense_ms']:8.3f} -> {r['compact_ms']:8.3f} ms  "
                          f"speed-up {r['speedup']:.2f}  eff {r['efficiency']:.2f}", flush=True)
                rows.extend(new)
    return rows


_MD_COLS = [("model", "model"), ("profile", "profile"), ("runtime", "runtime"), ("target", "target_removed"),
            ("groups removed", "groups_removed"), ("batch", "batch"), ("params", "params_dense"),
            ("params compact", "params_compact"), ("MMACs", "macs_dense_M"), ("MMACs compact", "macs_compact_M"),
            ("MAC red. x", "mac_reduction"), ("dense ms", "dense_ms"), ("compact ms", "compact_ms"),
            ("speed-up x", "speedup"), ("speed-up / MAC red.", "efficiency"), ("widths %8", "aligned8")]


def _markdown(rows: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> str:
    v = env["versions"]
    lines = [
        f"# speedup_bench ({env.get('cpu_model')}, ORT {v.get('onnxruntime')} CPU EP / OpenVINO "
        f"{v.get('openvino')} CPU, {args.threads} intra-op thread(s), torch {v.get('torch')})", "",
        f"Input 1x{'x'.join(map(str, INPUT))}; median of {args.repeats} rounds x {args.iters} iterations "
        f"(warm-up {args.warmup}), dense and compact interleaved in one fresh worker "
        "(`hwprune.runtime.bench.compare`).",
        "MAC red. = dense MACs / compact MACs; speed-up = dense median / compact median; "
        "speed-up / MAC red. = 1 means the runtime realises the whole MAC reduction.",
        f"Random zero groups (per-layer fraction = target +- {args.jitter}, seed {args.seed}); "
        "`widths %8` = share of conv/linear layers whose width is a multiple of 8.",
        "Calibrated profiles: " + (", ".join(f"`{c}`" for c in args.calibrated) or "none") + ".",
        "", f"Timed on {time.strftime('%Y-%m-%d', time.gmtime())}. " + args.note, "",
        "| " + " | ".join(h for h, _ in _MD_COLS) + " |", "|" + "---|" * len(_MD_COLS),
    ]
    for r in rows:
        cells = [f"{r[k]:.0%}" if k == "target_removed" else str(r[k]) for _, k in _MD_COLS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Summary (median speed-up / MAC reduction over models):", ""]
    keys = sorted({(r["runtime"], r["profile"], r["target_removed"], r["batch"]) for r in rows})
    for rt, prof, frac, b in keys:
        sel = [r for r in rows if (r["runtime"], r["profile"], r["target_removed"], r["batch"]) == (rt, prof, frac, b)]
        eff = [r["efficiency"] for r in sel]
        per = ", ".join(f"{r['model']} {r['efficiency']:.2f}" for r in sel)
        lines.append(f"- {rt}, {prof}, {frac:.0%} removed, batch {b}: {statistics.median(eff):.2f} (per model: {per})")
    return "\n".join(lines) + "\n"


def _floats(s: str) -> list[float]:
    return [float(t) for t in s.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated registry names")
    ap.add_argument("--fractions", default=",".join(map(str, FRACTIONS)), help="target fractions of groups removed")
    ap.add_argument("--align-profiles", default=",".join(ALIGN_PROFILES),
                    help=f"profiles compared at {round(ALIGN_FRACTION * 100)} percent removed (empty to skip)")
    ap.add_argument("--calibrated", default="",
                    help="calibrated profile YAMLs compared at 50 percent (comma-separated)")
    ap.add_argument("--runtimes", default=None, help="runtimes to time every point on [default: onnxruntime, and "
                    "openvino when installed]")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--iters", type=int, default=30, help="timed runs per round")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (fresh ORT session each)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs per round")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (0 = ORT default)")
    ap.add_argument("--jitter", type=float, default=0.15, help="per-layer spread of the removed fraction")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per compare worker")
    ap.add_argument("--note", default="Shared, loaded machine: expect +-10-20 % noise per point.",
                    help="free text written into the report (e.g. machine state)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.fractions = _floats(args.fractions)
    args.align_profiles = [p for p in args.align_profiles.split(",") if p]
    args.calibrated = [p for p in args.calibrated.split(",") if p]
    if args.runtimes is None:
        from hwprune.runtime.availability import backend_problem

        args.runtimes = "onnxruntime" + (",openvino" if backend_problem("openvino") is None else "")
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, write the result files and print the table."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # surgery's "keeping one group" warnings are expected
    torch.set_num_threads(1)  # surgery/export only; ORT runs in its own worker with --threads
    rows = run(args)
    env = collect_env(include_gpu=False)
    env["benchmark"] = {"iters": args.iters, "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads,
                        "batches": args.batches, "jitter": args.jitter, "seed": args.seed, "input": list(INPUT),
                        "argv": sys.argv[1:], "runtimes": args.runtimes,
                        "calibrated": args.calibrated, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ort = "".join((env["versions"].get("onnxruntime") or "none").split("."))
    pt = "".join(torch.__version__.split("+")[0].split(".")[:3])
    ov = "".join((env["versions"].get("openvino") or "").split(".")) if "openvino" in args.runtimes else ""
    stem = args.out_dir / (f"speedup_bench-ort{ort}" + (f"-ov{ov}" if ov else "") + f"-cpu-pt{pt}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(stem.with_suffix(".csv"), buf.getvalue())
    atomic_write_json(stem.with_suffix(".env.json"), env)
    text = _markdown(rows, env, args)
    atomic_write_text(stem.with_suffix(".md"), text)
    print(text)
    print(f"wrote {stem}.{{md,csv,env.json}}")


if __name__ == "__main__":
    main()
