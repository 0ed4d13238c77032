"""Training-step overhead of ProxSGD vs plain ``torch.optim.SGD`` on ResNet-20 (CPU, synthetic data).

For ResNet-20 (3x32x32, 10 classes) and a fixed synthetic batch (default 128), one training step is
forward + cross-entropy + backward + ``optimizer.step()``. Three optimisers, each on its own copy of
the same initial model: plain momentum SGD, and ProxSGD (WGSEF prox, lam 2.0, half-space phase from
step 0: ``hs_start=0``) on the channel groups of ``generic-channel`` and ``x86-avx2-ort`` (k for 50 %
group sparsity). Every repetition runs ``--steps`` timed steps of each optimiser in turn (interleaved,
after ``--warmup`` untimed steps each); the reported numbers are medians over repetitions of the mean
step time. ``opt.step`` time is measured separately inside the same steps: ``prox overhead`` =
median ProxSGD.step - median SGD.step (the prox + half-space bookkeeping alone).

Target: ProxSGD step / SGD step <= 1.10. Writes ``benchmarks/results/train_bench-cpu-pt<ver>.{md,csv,env.json}``.

Usage: .venv/bin/python benchmarks/train_bench.py [--steps 10] [--reps 5] [--warmup 3] [--batch 128]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _results_io import RESULTS, md_table, torch_tag, write_results
from torch import nn

from hwprune.groups import build_groups
from hwprune.models import create_model
from hwprune.profiles import load_profile
from hwprune.sparsity.proxsgd import ProxSGD

__all__ = ["main"]

LAM = 2.0
LR = 0.05


def _make_opts(base: nn.Module, profiles: list[str], example: torch.Tensor,
               sparsity: float) -> list[tuple[str, nn.Module, torch.optim.Optimizer, int]]:
    out: list[tuple[str, nn.Module, torch.optim.Optimizer, int]] = []
    m = copy.deepcopy(base)
    out.append(("sgd", m, torch.optim.SGD(m.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4), 0))
    for name in profiles:
        m = copy.deepcopy(base)
        gs = build_groups(m, load_profile(name), example, phase="structured")
        k = gs.k_for_sparsity(sparsity)
        opt = ProxSGD(m, gs, k, lr=LR, lam=LAM, momentum=0.9, weight_decay=5e-4, hs_start=0)
        out.append((f"proxsgd[{name}]", m, opt, gs.num_groups))
    return out


def _steps(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
           n: int) -> tuple[float, float]:
    """Run ``n`` steps; returns (mean seconds per whole step, mean seconds per opt.step)."""
    loss_fn = nn.CrossEntropyLoss()
    t_step = 0.0
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        ts = time.perf_counter()
        opt.step()
        t_step += time.perf_counter() - ts
    total = time.perf_counter() - t0
    return total / n, t_step / n


def run(steps: int, reps: int, warmup: int, batch: int, profiles: list[str], sparsity: float,
        seed: int) -> list[dict[str, Any]]:
    """Measure; one row per optimiser."""
    torch.manual_seed(seed)
    base = create_model("resnet20", num_classes=10, in_channels=3, input_size=32)
    base.train()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    opts = _make_opts(base, profiles, x[:1], sparsity)
    for _, m, opt, _ in opts:
        _steps(m, opt, x, y, warmup)
    whole: dict[str, list[float]] = {name: [] for name, *_ in opts}
    ostep: dict[str, list[float]] = {name: [] for name, *_ in opts}
    for r in range(reps):
        order = opts if r % 2 == 0 else opts[::-1]  # alternate the order to cancel drift
        for name, m, opt, _ in order:
            a, b = _steps(m, opt, x, y, steps)
            whole[name].append(a)
            ostep[name].append(b)
    base_whole = statistics.median(whole["sgd"])
    base_step = statistics.median(ostep["sgd"])
    rows = []
    for name, _, opt, n_groups in opts:
        w, s = statistics.median(whole[name]), statistics.median(ostep[name])
        frozen = int(opt.frozen.sum()) if isinstance(opt, ProxSGD) else 0
        rows.append({"optimizer": name, "groups": n_groups, "frozen_at_end": frozen,
                     "step_ms": round(1e3 * w, 2), "step_ms_min": round(1e3 * min(whole[name]), 2),
                     "step_ms_max": round(1e3 * max(whole[name]), 2), "opt_step_ms": round(1e3 * s, 3),
                     "prox_overhead_ms": round(1e3 * (s - base_step), 3),
                     "ratio_vs_sgd": round(w / base_whole, 4),
                     "ratio_from_opt_step": round((base_whole + s - base_step) / base_whole, 4),
                     "meets_1.10": w / base_whole <= 1.10})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per optimiser per repetition")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions (median over them)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per optimiser before timing")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--profiles", default="generic-channel,x86-avx2-ort")
    ap.add_argument("--sparsity", type=float, default=0.5, help="group sparsity that sets k")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="free text added to the Markdown (e.g. machine load)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    profiles = [p for p in args.profiles.split(",") if p]
    rows = run(args.steps, args.reps, args.warmup, args.batch, profiles, args.sparsity, args.seed)
    cols = [("optimizer", "optimizer"), ("groups", "groups"), ("frozen_at_end", "frozen at end"),
            ("step_ms", "step ms (median)"), ("step_ms_min", "min"), ("step_ms_max", "max"),
            ("opt_step_ms", "opt.step ms"), ("prox_overhead_ms", "prox overhead ms"),
            ("ratio_vs_sgd", "step / SGD step"), ("ratio_from_opt_step", "(SGD step + overhead) / SGD step"),
            ("meets_1.10", "<= 1.10")]
    md = [f"# train_bench: ProxSGD vs SGD step time, ResNet-20, batch {args.batch}, CPU "
          f"({torch.get_num_threads()} threads, torch {torch.__version__})", "",
          f"Protocol: synthetic 3x32x32 batch, forward + CE + backward + opt.step; {args.warmup} warm-up steps, "
          f"then {args.reps} interleaved repetitions x {args.steps} steps per optimiser (order alternated); "
          f"median over repetitions of the mean step time. ProxSGD: lam {LAM}, lr {LR}, momentum 0.9, "
          f"half-space from step 0, k for {args.sparsity:.0%} group sparsity. `prox overhead` = median "
          "ProxSGD.step - median SGD.step; `(SGD step + overhead) / SGD step` is the ratio estimated from "
          "the opt.step timings alone (less sensitive to load spikes than the whole-step ratio). "
          "Target step / SGD step <= 1.10.", ""]
    if args.note:
        md += [args.note, ""]
    md += md_table(rows, cols)
    write_results(args.out_dir / f"train_bench-cpu-{torch_tag()}", rows, md, vars(args))
    print("\n".join(md))


if __name__ == "__main__":
    main()
