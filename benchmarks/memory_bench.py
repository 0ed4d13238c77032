"""Peak memory of group building and surgery on large-input models (target: swin_t at 224x224 <= 4 GiB).

For each model (default torchvision ``swin_t`` at 224x224; also any hwprune registry name), in a
fresh process per (model, profile): build the model (random weights), then ``build_groups`` under
the profile, zero 30 % of the removable groups of every scope, and ``remove_zero_groups`` (with
its equivalence check on 4 + 1 inputs). Reported: the process's peak resident set size
(``ru_maxrss``, the whole process: Python, torch, the model, its deep copy and the check's
activations) after building the model, after ``build_groups`` and after ``remove_zero_groups``,
with the wall time of each step. Peak RSS is per process, so other jobs on the machine do not
change it (they change only the times).

Needs torchvision for torchvision names (optional; installs nothing). Writes
``benchmarks/results/memory_bench-cpu-pt<ver>.{md,csv,env.json}``.

Usage: .venv/bin/python benchmarks/memory_bench.py [--models swin_t] [--size 224]
       [--profiles x86-avx2-ort,generic-channel] [--fraction 0.3] [--limit-gb 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_io import RESULTS, md_table, torch_tag, write_results  # noqa: E402

GIB = 2**30


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # ru_maxrss is KiB on Linux


def measure(name: str, profile: str, size: int, fraction: float) -> dict[str, Any]:
    """One (model, profile) measurement in this process (call it in a fresh one)."""
    from zoo_bench import zero_per_scope

    from hwprune.groups import build_groups
    from hwprune.models import create_model, is_model
    from hwprune.profiles import load_profile
    from hwprune.surgery.remove import remove_zero_groups

    row: dict[str, Any] = {"model": name, "profile": profile, "input": size, "start_gib": round(_peak_gib(), 3)}
    t0 = time.perf_counter()
    if is_model(name):
        model = create_model(name, input_size=size).eval()
    else:
        from hwprune.models.torchvision_zoo import build
        model = build(name, input_size=size)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    row.update(params=sum(p.numel() for p in model.parameters()), model_gib=round(_peak_gib(), 3))
    t1 = time.perf_counter()
    gs = build_groups(model, load_profile(profile), x)
    t2 = time.perf_counter()
    row.update(groups=gs.num_groups, dense_sets=len(gs.dense), build_groups_s=round(t2 - t1, 1),
               after_build_groups_gib=round(_peak_gib(), 3))
    row["zeroed"] = zero_per_scope(gs, fraction, 0)
    compact, plan = remove_zero_groups(model, gs, x)
    t3 = time.perf_counter()
    row.update(surgery_s=round(t3 - t2, 1), after_surgery_gib=round(_peak_gib(), 3),
               params_compact=sum(p.numel() for p in compact.parameters()),
               equivalence_max_abs=max((r.get("max_abs", 0.0) for r in plan.equivalence), default=0.0),
               total_s=round(t3 - t0, 1))
    return row


def main(argv: list[str] | None = None) -> int:
    """Run every (model, profile) in a fresh process and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="swin_t")
    ap.add_argument("--profiles", default="x86-avx2-ort,generic-channel")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--limit-gb", type=float, default=4.0, help="the target the table is checked against")
    ap.add_argument("--note", default="")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "PROFILE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        torch.set_num_threads(1)
        print(json.dumps(measure(args.one[0], args.one[1], args.size, args.fraction)), flush=True)
        return 0
    rows = []
    for name in args.models.split(","):
        for profile in args.profiles.split(","):
            proc = subprocess.run([sys.executable, __file__, "--one", name, profile, "--size", str(args.size),
                                   "--fraction", str(args.fraction)], capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if not lines:
                raise SystemExit(f"{name}/{profile} failed: {proc.stderr.strip().splitlines()[-1:]}")
            row = json.loads(lines[-1])
            row["within_limit"] = row["after_surgery_gib"] <= args.limit_gb
            rows.append(row)
            print(row, flush=True)
    cols = [("model", "model"), ("input", "input"), ("profile", "profile"), ("params", "params"),
            ("groups", "groups"), ("dense_sets", "dense sets"), ("start_gib", "RSS at start GiB"),
            ("model_gib", "after model GiB"), ("after_build_groups_gib", "peak after build_groups GiB"),
            ("after_surgery_gib", "peak after remove_zero_groups GiB"), ("within_limit", f"<= {args.limit_gb} GiB"),
            ("build_groups_s", "build_groups s"), ("surgery_s", "surgery s"),
            ("equivalence_max_abs", "equivalence max abs")]
    md = ["# memory_bench: peak RSS of build_groups + remove_zero_groups", "",
          f"Fresh process per row, 1 torch thread, batch-1 example input, {args.fraction:.0%} of the removable "
          "groups of every scope zeroed; peak RSS = `ru_maxrss` of the whole process (cumulative, so each "
          "column includes the steps before it).", *([args.note] if args.note else []), "", *md_table(rows, cols)]
    write_results(RESULTS / f"memory_bench-cpu-{torch_tag()}", rows, md, vars(args))
    return 0 if all(r["within_limit"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
