"""Time the WGSEF prox against a memory-bound baseline on CPU (float32 parameters).

For n grouped elements (1e5 .. 1e8, capped by --max-n) it times, per configuration:
  * channel-like groups of size s in {64, 576, 4608}: ``wgsef.prox_`` (in place) and ``wgsef.prox``
    (allocating) on a zero-padded (B, m, s) view, with per-layer scopes of ``--scope-groups`` groups
    (B = n / (s m)) and with one global scope (B = 1, m = n / s); k = m // 2, lam = 1e-2;
  * 2:4 blocks: ``wgsef.prox_nm_`` / ``wgsef.prox_nm`` on the (n/4, 4) view;
next to the baseline, measured in the same run: one in-place multiply of the same view by a per-row
scale (reads and writes every element once). Each timing is the median of --repeats calls; the input
is restored (untimed) before each call. Reports ns/element, prox/baseline and the log-log slope of
time vs n from 1e6 to the largest n. Each configuration runs on both prox paths (``--paths``):
``fused`` (``HWPRUNE_PROX_KERNEL=auto``, the default: the C kernel of ``hwprune.sparsity.fused`` for
large calls) and ``eager`` (``HWPRUNE_PROX_KERNEL=off``, pure PyTorch, the reference).
Writes benchmarks/results/prox_bench-cpu-pt<ver>.{md,csv,env.json}.

Usage: python benchmarks/prox_bench.py [--max-n 1e8] [--repeats 5] [--threads 1] [--paths fused,eager]
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hwprune.base.files import atomic_write_json, atomic_write_text
from hwprune.runtime.envinfo import collect_env
from hwprune.sparsity import fused, wgsef

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (10**5, 10**6, 10**7, 10**8)
LAM = 1e-2


def _median_ms(fn: Callable[[], object], reset: Callable[[], object], repeats: int) -> float:
    reset()
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        reset()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _cases(n: int, scope_groups: int) -> list[tuple[str, int, str, Callable[[torch.Tensor], tuple]]]:
    """(kind, s, scope, make(x) -> (view, prox_inplace, prox_alloc, baseline)) per configuration."""
    out = []
    for s in (64, 576, 4608):
        m_total = n // s
        if m_total < 2:
            continue
        for scope in ("per_layer", "global"):
            m = min(scope_groups, m_total) if scope == "per_layer" else m_total
            b = m_total // m

            def make(x: torch.Tensor, s: int = s, m: int = m, b: int = b) -> tuple:
                v = x[: b * m * s].view(b, m, s)
                k = max(1, m // 2)
                rs = torch.full((b, m, 1), 0.999, dtype=x.dtype)
                return (lambda: wgsef.prox_(v, k, LAM), lambda: wgsef.prox(v, k, LAM), lambda: v.mul_(rs), v.numel())

            out.append(("channel", s, f"{scope}(m={m})", make))

    def make_nm(x: torch.Tensor) -> tuple:
        v = x[: (n // 4) * 4].view(-1, 4)
        rs = torch.full((v.shape[0], 1), 0.999, dtype=x.dtype)
        return (lambda: wgsef.prox_nm_(v, 2, LAM), lambda: wgsef.prox_nm(v, 2, LAM), lambda: v.mul_(rs), v.numel())

    out.append(("2:4", 4, "per_block", make_nm))
    return out


_PATH_MODE = {"fused": "auto", "eager": "off"}


def run(max_n: int, repeats: int, scope_groups: int, paths: list[str]) -> list[dict]:
    rows = []
    for n in [s for s in SIZES if s <= max_n]:
        master = torch.randn(n, generator=torch.Generator().manual_seed(0))
        x = master.clone()

        def reset(x: torch.Tensor = x, master: torch.Tensor = master) -> None:
            x.copy_(master)

        reps = repeats if n < 10**8 else max(3, repeats // 2)
        for kind, s, scope, make in _cases(n, scope_groups):
            for path in paths:
                os.environ["HWPRUNE_PROX_KERNEL"] = _PATH_MODE[path]
                prox_inplace, prox_alloc, baseline, numel = make(x)
                t_base = _median_ms(baseline, reset, reps)
                t_in = _median_ms(prox_inplace, reset, reps)
                t_alloc = _median_ms(prox_alloc, reset, reps)
                rows.append({
                    "path": path, "kind": kind, "group_size": s, "scope": scope, "n": numel,
                    "baseline_ms": round(t_base, 4), "prox_inplace_ms": round(t_in, 4), "prox_ms": round(t_alloc, 4),
                    "ns_per_elem": round(1e6 * t_in / numel, 4), "ratio_inplace": round(t_in / t_base, 3),
                    "ratio_alloc": round(t_alloc / t_base, 3),
                })
                print(f"{path:5s} {kind:8s} s={s:5d} {scope:18s} n={numel:>10d}  base {t_base:9.3f} ms  "
                      f"prox_ {t_in:9.3f} ms  prox {t_alloc:9.3f} ms  ratio {t_in / t_base:6.2f}", flush=True)
    return rows


def _slopes(rows: list[dict]) -> dict[tuple, float]:
    """Log-log slope of prox_ time vs n over n >= 1e6 (least squares), per configuration."""
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for r in rows:
        if r["n"] >= 0.9e6:
            groups.setdefault((r["path"], r["kind"], r["group_size"], r["scope"].split("(")[0]), []).append(
                (math.log(r["n"]), math.log(r["prox_inplace_ms"])))
    out = {}
    for key, pts in groups.items():
        if len(pts) >= 2:
            mx, my = statistics.mean(p[0] for p in pts), statistics.mean(p[1] for p in pts)
            out[key] = sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-n", type=float, default=1e8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--scope-groups", type=int, default=512, help="groups per per-layer scope")
    ap.add_argument("--paths", default="fused,eager", help="prox paths to time: fused (kernel, default), eager")
    ap.add_argument("--note", default="Shared 2-core machine with other jobs running: ratios within one run only.")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        paths = [p for p in args.paths.split(",") if p]
        rows = run(int(args.max_n), args.repeats, args.scope_groups, paths)
    slopes = _slopes(rows)
    ver = "".join(torch.__version__.split("+")[0].split(".")[:3])
    stem = args.out_dir / f"prox_bench-cpu-pt{ver}"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(stem.with_suffix(".csv"), buf.getvalue())
    env = collect_env(include_gpu=False)
    env.update({"torch": torch.__version__, "cpu": env["cpu_model"], "threads": torch.get_num_threads(), "lam": LAM,
           "scope_groups": args.scope_groups, "repeats": args.repeats, "max_n": int(args.max_n),
           "paths": paths, "kernel_available": fused.available(), "note": args.note,
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    atomic_write_json(stem.with_suffix(".env.json"), env)
    head = ["path", "kind", "s", "scope", "n", "baseline ms", "prox_ ms", "prox ms", "ns/elem", "prox_/base",
            "prox/base"]
    lines = [f"# prox_bench ({env['cpu']}, {env['threads']} threads, torch {env['torch']})", "",
             "Median of repeats; prox_ is in place (compare with the in-place baseline), prox allocates its output.",
             "Path fused = the default (C kernel for large calls, hwprune.sparsity.fused); eager = pure PyTorch.",
             f"Machine state: {args.note}", "", "Command: `.venv/bin/python benchmarks/prox_bench.py "
             f"--max-n {args.max_n:g} --repeats {args.repeats} --threads {args.threads} --paths {args.paths}`", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(v) for v in (
            r["path"], r["kind"], r["group_size"], r["scope"], f"{r['n']:.0e}", r["baseline_ms"], r["prox_inplace_ms"],
            r["prox_ms"], r["ns_per_elem"], r["ratio_inplace"], r["ratio_alloc"])) + " |")
    lines += ["", "Scaling exponent (log-log slope of prox_ time vs n, n >= 1e6):", ""]
    lines += [f"- {k[0]} {k[1]} s={k[2]} {k[3]}: {v:.3f}" for k, v in sorted(slopes.items())]
    text = "\n".join(lines) + "\n"
    atomic_write_text(stem.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
