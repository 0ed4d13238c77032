"""The fine-tune optimiser's step cost: ``masked_optimizer`` (hwprune's fine-tune) vs ``torch.optim.SGD``.

For each model: a compact model (50 % of the ``x86-avx2-ort`` channel blocks per scope removed by the
top-k projection, then surgery), its groups, and one fixed random batch (``--batch`` x 1 x 28 x 28,
Fashion-MNIST's shape). Both optimisers (momentum 0.9, weight decay 5e-4) train the same model in
alternating rounds of ``--steps`` steps (forward + backward + step, 1 thread); the table gives the
median ms per step of each and the ratio masked / SGD (the issue-11 target: hwprune's fine-tune
epoch <= 1.1x Torch-Pruning's, whose fine-tune uses plain SGD).

Writes ``benchmarks/results/optim_step_bench-cpu-pt<ver>.{md,csv,env.json}``.

Usage: .venv/bin/python benchmarks/optim_step_bench.py [--models resnet20,vgg,lenet5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _results_io import RESULTS, md_table, torch_tag, write_results

from hwprune.groups import build_groups
from hwprune.models import create_model
from hwprune.profiles import load_profile
from hwprune.sparsity.selection import project_to_k_
from hwprune.surgery.remove import remove_zero_groups
from hwprune.training.phases import masked_optimizer

KWARGS = {"vgg": {"width": 0.5, "depth": 11}}


def compact_model(name: str, sparsity: float) -> tuple[torch.nn.Module, Any]:
    """The compact model after the top-k projection at ``sparsity`` and surgery, with its groups."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, input_size=28, **KWARGS.get(name, {}))
    x = torch.randn(1, 1, 28, 28)
    profile = load_profile("x86-avx2-ort")
    gs = build_groups(model, profile, x)
    project_to_k_(gs, gs.k_for_sparsity(sparsity))
    compact, _ = remove_zero_groups(model, gs, x)
    return compact, build_groups(compact, profile, x)


def ms_per_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                steps: int) -> float:
    """Mean ms of ``steps`` training steps."""
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t0) / steps * 1e3


def main(argv: list[str] | None = None) -> None:
    """Time both optimisers per model and write the results files."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--models", default="resnet20,vgg,lenet5")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--note", default="", help="machine state (quiet/busy) for the report")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.models.split(","):
        model, gs = compact_model(name, args.sparsity)
        x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
        sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        masked = masked_optimizer(model, gs, 0.01, 0.9, 5e-4)
        ms_per_step(model, sgd, x, y, 3), ms_per_step(model, masked, x, y, 3)  # warm-up
        a, b = [], []
        for _ in range(args.rounds):
            a.append(ms_per_step(model, sgd, x, y, args.steps))
            b.append(ms_per_step(model, masked, x, y, args.steps))
        sgd_ms, masked_ms = statistics.median(a), statistics.median(b)
        rows.append({"model": name, "groups": gs.num_groups, "sgd_ms": round(sgd_ms, 3),
                     "masked_ms": round(masked_ms, 3), "ratio": round(masked_ms / sgd_ms, 3)})
        print(f"{name}: SGD {sgd_ms:.2f} ms/step, masked_optimizer {masked_ms:.2f} ms/step, "
              f"ratio {masked_ms / sgd_ms:.3f}", flush=True)
    cols = [("model", "model"), ("groups", "groups"), ("sgd_ms", "torch SGD ms/step"),
            ("masked_ms", "masked_optimizer ms/step"), ("ratio", "masked / SGD")]
    md = [f"# optim_step_bench: fine-tune optimiser step, compact models at {100 * args.sparsity:g} % removed", "",
          f"Batch {args.batch} x 1 x 28 x 28, 1 thread, median of {args.rounds} alternating rounds of "
          f"{args.steps} steps (forward + backward + step). {args.note}", "", *md_table(rows, cols)]
    write_results(RESULTS / f"optim_step_bench-cpu-{torch_tag()}", rows, md, vars(args))


if __name__ == "__main__":
    main()
