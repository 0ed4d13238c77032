"""``hwprune train``, ``prune``, ``nm`` and ``run``: thin wrappers over ``hwprune.pipeline.steps``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hwprune.base.errors import ConfigError
from hwprune.cli.jobopts import build_job_config, job_options

__all__ = ["COMMANDS"]

_RUN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _parse_sparsity(text: str | None) -> list[float] | None:
    from hwprune.base.checks import check_sparsity

    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sparsity: expected a number or a comma-separated list, got '{text}'") from None
    if not values:
        raise ConfigError(f"--sparsity: expected a number or a comma-separated list, got '{text}'")
    return [check_sparsity(v, what="--sparsity") for v in values]


@click.command("train")
@job_options
@click.option("--sparsity", type=float, help="fraction of groups removed per scope [default: 0.5]")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="run directory")
@click.option("--resume/--no-resume", default=False, help="continue a killed run from its checkpoints")
@click.option("--json", "as_json", is_flag=True, help="print metrics.json")
def train_cmd(out: Path, resume: bool, as_json: bool, **options: Any) -> None:
    """Dense training, the method's sparse phase to exactly k groups per scope, surgery, fine-tune."""
    from hwprune.pipeline.steps import step_train
    from hwprune.training.distributed import is_main_process, shutdown_distributed

    cfg = build_job_config(options)
    m = step_train(cfg, out, resume=resume).metrics
    main_rank = is_main_process()
    shutdown_distributed()  # no-op outside torchrun
    if not main_rank:
        return
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=2))
        return
    g = m.groups
    click.echo(f"test accuracy dense {m.test_accuracy.dense:.4f} -> {m.final_stage} {m.test_accuracy.final:.4f} "
               f"({m.splits.test} test images); groups nonzero {g.nonzero} / {g.total} (k = {g.k}, the method left "
               f"{g.nonzero_before_projection}); exact k in every scope: {m.exact_k}")
    for s in m.scopes:
        click.echo(f"  {s.name:<40} total {s.total:>5}  k {s.k:>5}  nonzero {s.nonzero:>5}")
    click.echo(f"run directory: {out}")


@click.command("prune")
@click.argument("run_dir", type=_RUN_DIR)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def prune_cmd(run_dir: Path, as_json: bool) -> None:
    """Surgery: remove zero groups, check equivalence, write pruned.* + plan (done by 'train' unless --masked-finetune).

    On a run whose train job did the surgery this prints the stored summary.
    """
    from hwprune.pipeline.steps import step_prune

    s = step_prune(run_dir)
    if as_json:
        click.echo(json.dumps(s.to_dict(), indent=2))
        return
    p, m, acc = s.params, s.macs, s.val_accuracy
    when = "after" if s.after_finetune else "before"
    accuracy = (f"validation accuracy {acc['sparse']:.4f} -> {acc['pruned']:.4f} ({when} the fine-tune); "
                if acc.get("sparse") is not None and acc.get("pruned") is not None else "")
    click.echo(f"params {p['sparse']:,} -> {p['pruned']:,}; MACs {m['sparse']:,} -> {m['pruned']:,}; "
               f"{accuracy}max |diff| {s.max_abs_diff:.2e}")


@click.command("nm")
@click.argument("run_dir", type=_RUN_DIR)
@click.option("--epochs", type=int, default=None, help="epochs of the N:M phase [default: as recorded in config.yaml]")
@click.option("--lam", type=float, default=None, help="lambda of the batched SEF prox [default: as recorded]")
def nm_cmd(run_dir: Path, epochs: int | None, lam: float | None) -> None:
    """N:M phase (profile's nm rules) on RUN_DIR's pruned model; writes nm.* and records its options."""
    import dataclasses

    from hwprune.pipeline.steps import open_run, step_nm

    rd = open_run(run_dir)
    recorded = rd.config.pipeline
    opts = dataclasses.replace(recorded, nm_epochs=recorded.nm_epochs if epochs is None else epochs,
                               nm_lam=recorded.nm_lam if lam is None else lam)
    info = step_nm(rd, opts)
    if info is None:
        raise ConfigError(f"{run_dir}/profile.yaml has no nm rule; nothing to do")
    v = info.val_accuracy
    before = f"{v.dense:.4f}" if v.dense is not None else "-"
    after = f"{v.final:.4f}" if v.final is not None else "-"
    click.echo(f"N:M {info.pattern} on {len(info.layers)} layers; validation accuracy {before} -> {after}, "
               f"test accuracy {info.test_accuracy:.4f}; blocks {info.blocks}, "
               f"max nonzero per block {info.max_nonzero_per_block}")


@click.command("run")
@job_options
@click.option("--sparsity", "sparsity_text", help="fraction of groups removed, or a list such as 0.3,0.5,0.7 "
              "(a sweep) [default: 0.5]")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="run directory")
@click.option("--bench-iters", type=int, help="override the profile's timing iterations")
@click.option("--nm-epochs", type=int, default=2, show_default=True, help="epochs of the N:M phase (nm profiles)")
@click.option("--latency-budget", "latency_budget", help="prune to a latency at batch 1 instead of a sparsity: "
              "milliseconds (12.5) or a fraction of the dense latency (0.6x)")
def run_cmd(out: Path, sparsity_text: str | None, bench_iters: int | None, nm_epochs: int,
            latency_budget: str | None, **options: Any) -> None:
    """The whole pipeline: train -> surgery -> (N:M) -> ONNX export -> timing -> report.

    With no arguments: bundled digits data, a small CNN, the profile matching this machine.
    """
    from hwprune.pipeline.steps import PipelineOptions, run, sweep

    sparsities = _parse_sparsity(sparsity_text)
    cfg = build_job_config(options, sparsity=sparsities[0] if sparsities else None)
    opts = PipelineOptions(bench_iters=bench_iters, nm_epochs=nm_epochs)
    if latency_budget is not None:
        from hwprune.pipeline.budget import run_with_budget

        res = run_with_budget(cfg, out, latency_budget, opts)
        click.echo(f"latency budget {res['budget_ms']:.4f} ms: predicted {res['predicted_ms']:.4f} ms, measured "
                   f"{res['measured_ms']:.4f} ms ({len(res['iterations'])} run(s)); report: {out / 'report.md'}")
        return
    if sparsities and len(sparsities) > 1:
        summary = sweep(cfg, sparsities, out, opts=opts)
        for p in summary["points"]:
            click.echo(f"  {p['label']:<24} accuracy {p['accuracy']:.4f}  latency {p['latency_ms']:.3f} ms")
        click.echo(f"sweep written to {out}/sweep.json and {out}/plots/pareto.png")
        return
    report = run(cfg, out, opts=opts)
    from rich.console import Console

    from hwprune.report.render import summary_table

    Console().print(summary_table(report))
    click.echo(f"report: {out / 'report.md'}")


COMMANDS = [train_cmd, prune_cmd, nm_cmd, run_cmd]
