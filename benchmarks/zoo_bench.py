"""Zoo benchmark: does hwprune prune, remove and export real torchvision architectures?

For every torchvision classification model named (default: all of
``torchvision.models.list_models(module=torchvision.models)`` up to ``--max-params``), in a fresh
worker process per model (time and memory limits, so one model cannot take the run down):

1. build it with random weights (``hwprune.models.torchvision_zoo.build``), 10 classes, input
   ``--size`` (64; raised where the architecture needs it, see ``input_size_for``), then
   ``randomise_`` it so no channel is trivially zero (zero heads, 1e-6 layer scales) and BatchNorm
   statistics are calibrated on random batches (unit-scale activations);
2. for each profile (default ``generic-channel`` and ``x86-avx2-ort``): ``build_groups``, zero
   ``round(--fraction * m_s)`` random removable groups of every scope (default 30 %),
   ``remove_zero_groups`` (its equivalence check: compact vs masked within ATOL/RTOL), check the
   compact model has fewer parameters, ``export_and_validate`` it (ONNX checker + ORT parity at
   batch 1, 3 and the example).

Outcome per (model, profile): ``pass`` (all of the above), ``refused`` (an ``HwpruneError`` with
one line, e.g. no removable group or an exporter failure), ``mismatch`` (a numerical contract
broken: a hwprune defect), ``crash`` (any other exception, a hard crash, the time or memory limit).
A model passes outright when every profile passes. Writes
``benchmarks/results/zoo_bench[-NAME]-ort<ver>-cpu-pt<ver>.{md,csv,env.json}``.

Needs torchvision (optional; see ``hwprune/models/torchvision_zoo.py``; this script installs
nothing). Usage::

    .venv/bin/python benchmarks/zoo_bench.py [--models resnet18,vit_b_16] [--profiles generic-channel,x86-avx2-ort]
        [--size 64] [--fraction 0.3] [--max-params 150e6] [--timeout 900] [--max-rss-gb 10] [--name NAME]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

import torch

from hwprune.base.errors import HwpruneError, NumericalMismatchError
from hwprune.groups import GroupSet, build_groups
from hwprune.models import count_params_and_macs
from hwprune.models.torchvision_zoo import (
    build,
    classification_models,
    import_torchvision,
    input_size_for,
    randomise_,
)
from hwprune.profiles import load_profile
from hwprune.runtime.export import export_and_validate
from hwprune.surgery.remove import remove_zero_groups

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_io import RESULTS, md_table, ort_tag, torch_tag, write_results  # noqa: E402

PROFILES = ("generic-channel", "x86-avx2-ort")
STATUSES = ("pass", "refused", "mismatch", "crash")


def zero_per_scope(gs: GroupSet, fraction: float, seed: int) -> int:
    """Zero ``round(fraction * m_s)`` random removable groups of every scope (seeded by scope name)."""
    ids: list[int] = []
    for s, name in enumerate(gs.scope_names):
        members = torch.nonzero((gs.scope_index == s) & gs.removable).flatten()
        n = round(fraction * members.numel())
        if n:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            ids += [int(i) for i in members[torch.randperm(members.numel(), generator=gen)[:n]]]
    if ids:
        gs.zero_(sorted(ids))
    return len(ids)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:400]


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_profile(dense: torch.nn.Module, x: torch.Tensor, profile: str, args: argparse.Namespace,
                tmp: Path) -> dict[str, Any]:
    """One (model, profile) point: groups, 30 % zeroed, surgery, export; returns the row."""
    row: dict[str, Any] = {"profile": profile}
    model = copy.deepcopy(dense)
    t0 = time.perf_counter()
    try:
        gs = build_groups(model, load_profile(profile), x)
        row.update(groups=gs.num_groups, removable=int(gs.removable.sum()), dense_sets=len(gs.dense),
                   heads=sum(e.count for e in gs.entries if e.kind == "head"))
        row["zeroed"] = zero_per_scope(gs, args.fraction, args.seed)
        if not row["zeroed"]:
            why = gs.dense[0]["reason"] if gs.dense else "no rule matched a prunable layer"
            raise HwpruneError(f"no removable group under {profile} ({len(gs.dense)} sets dense; first: {why})")
        compact, plan = remove_zero_groups(model, gs, x)
        row["surgery_max_abs"] = max((r.get("max_abs", 0.0) for r in plan.equivalence), default=0.0)
        params, macs = count_params_and_macs(compact, x)
        row.update(params_compact=params, macs_compact=macs)
        if params >= row_dense_params(dense):
            raise HwpruneError("surgery removed no parameter")
        rep = export_and_validate(compact, x, tmp / f"{profile}.onnx")
        row.update(exporter=rep.exporter, ort_max_abs=rep.max_abs_diff, fallback=rep.fallback_reason[:200])
        row["status"] = "pass"
    except NumericalMismatchError as exc:
        row.update(status="mismatch", message=_one_line(exc))
    except HwpruneError as exc:
        row.update(status="refused", message=_one_line(exc))
    except Exception as exc:  # noqa: BLE001 - a crash is a result here
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        row.update(status="crash", message=f"{_one_line(exc)} at {Path(frame.filename).name}:{frame.lineno}")
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def row_dense_params(model: torch.nn.Module) -> int:
    """Parameter count of the dense model."""
    return sum(p.numel() for p in model.parameters())


def worker(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """All profiles of one model (runs in its own process)."""
    size = input_size_for(name, args.size)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(args.seed))
    dense = randomise_(build(name, input_size=size, seed=args.seed), seed=args.seed, example_input=x)
    params, macs = count_params_and_macs(dense, x)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for profile in args.profiles:
            row = {"model": name, "input": size, "params_dense": params, "macs_dense": macs,
                   **run_profile(dense, x, profile, args, Path(tmp))}
            row["peak_rss_gb"] = round(_rss_gb(), 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _spawn(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    cmd = [sys.executable, __file__, "--worker", name, "--profiles", ",".join(args.profiles), "--size",
           str(args.size), "--fraction", str(args.fraction), "--seed", str(args.seed)]
    limit = int(args.max_rss_gb * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, preexec_fn=cap,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}, check=False)
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err, code = f"time limit of {args.timeout} s", -1
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    done = {r["profile"] for r in rows}
    tail = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or [f"exit code {code}"]
    for profile in args.profiles:
        if profile not in done:
            rows.append({"model": name, "profile": profile, "status": "crash",
                         "message": f"worker died (exit {code}): {tail[0][:300]}",
                         "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def _summary(rows: list[dict[str, Any]], models: list[str], skipped: list[str]) -> list[str]:
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    outright = [m for m in models if all(r["status"] == "pass" for r in rows if r["model"] == m)]
    lines = [f"Models run: {len(models)}; (model, profile) points: {len(rows)}: "
             + ", ".join(f"{counts[s]} {s}" for s in STATUSES) + ".",
             f"Models passing outright under every profile: {len(outright)}/{len(models)} "
             f"({100.0 * len(outright) / max(len(models), 1):.1f} %)."]
    if skipped:
        lines.append("Not run (more than the --max-params limit for this 24 GiB shared machine): "
                     f"{', '.join(skipped)}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the zoo (or one worker) and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="", help="comma-separated torchvision names (default: all)")
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-params", type=float, default=150e6)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per model (all profiles)")
    ap.add_argument("--max-rss-gb", type=float, default=10.0, help="address-space limit per worker")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="", help="suffix of the result files (e.g. 'table')")
    ap.add_argument("--note", default="", help="free text for the report (machine state)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.profiles = [p for p in args.profiles.split(",") if p]
    if args.worker:
        torch.set_num_threads(args.threads)
        worker(args.worker, args)
        return 0
    names = [m for m in args.models.split(",") if m] or classification_models()
    sizes = _param_counts(names)
    skipped = [n for n in names if sizes[n] > args.max_params]
    models = [n for n in names if n not in skipped]
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i, name in enumerate(models):
        got = _spawn(name, args)
        rows += got
        print(f"[{i + 1}/{len(models)}] {name}: " + ", ".join(f"{r['profile']}={r['status']}" for r in got)
              + "".join(f"\n    {r['profile']}: {r['message']}" for r in got if r.get("message")), flush=True)
    cols = [("model", "model"), ("input", "input"), ("profile", "profile"), ("status", "status"),
            ("params_dense", "params"), ("params_compact", "params compact"), ("removable", "groups"),
            ("zeroed", "zeroed"), ("heads", "heads"), ("dense_sets", "dense sets"),
            ("surgery_max_abs", "surgery max abs"), ("exporter", "exporter"), ("ort_max_abs", "ORT max abs"),
            ("seconds", "s"), ("peak_rss_gb", "peak RSS GiB"), ("message", "message")]
    md = ["# zoo_bench: torchvision architectures through groups, surgery and ONNX export", "",
          f"Profiles {', '.join(args.profiles)}; input {args.size}x{args.size} (raised where needed); "
          f"{args.fraction:.0%} of the removable groups of every scope zeroed; random weights perturbed by "
          f"`randomise_`; seed {args.seed}; {args.threads} thread(s) per worker; "
          f"wall {time.perf_counter() - t0:.0f} s.",
          *([args.note] if args.note else []), "", *_summary(rows, models, skipped), "", *md_table(rows, cols)]
    stem = RESULTS / "-".join(["zoo_bench", *([args.name] if args.name else []), ort_tag(), "cpu", torch_tag()])
    write_results(stem, rows, md, {k: v for k, v in vars(args).items() if k != "worker"})
    print("\n".join(_summary(rows, models, skipped)))
    return 0


def _param_counts(names: list[str]) -> dict[str, int]:
    """Parameters of each model at 1000 classes, from torchvision's weight metadata (nothing downloaded or built)."""
    tv = import_torchvision()
    out = {}
    for n in names:
        try:
            out[n] = int(tv.models.get_model_weights(n).DEFAULT.meta["num_params"])
        except (ValueError, KeyError, AttributeError):  # no published weights: count on the meta device
            with torch.device("meta"):
                out[n] = sum(p.numel() for p in build(n).parameters())
    return out


if __name__ == "__main__":
    raise SystemExit(main())
