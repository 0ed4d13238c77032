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
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sparsity: expected a number or a comma-separated list, got '{text}'") from None
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if not values or bad:
        raise ConfigError(f"--sparsity: every value must be in [0, 1), got '{text}'")
    return values


@click.command("train")
@job_options
@click.option("--sparsity", type=float, help="fraction of groups removed per scope [default: 0.5]")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="run directory")
@click.option("--resume/--no-resume", default=False, help="continue a killed run from its checkpoints")
@click.option("--json", "as_json", is_flag=True, help="print metrics.json")
def train_cmd(out: Path, resume: bool, as_json: bool, **options: Any) -> None:
    """Dense training, the method's sparse phase to exactly k groups per scope, masked fine-tune."""
    from hwprune.pipeline.steps import step_train
    from hwprune.training.distributed import is_main_process, shutdown_distributed

    cfg = build_job_config(options)
    metrics = step_train(cfg, out, resume=resume)
    main_rank = is_main_process()
    shutdown_distributed()  # no-op outside torchrun
    if not main_rank:
        return
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    acc = metrics["accuracy"]
    click.echo(f"accuracy dense {acc['dense']:.4f} -> sparse {acc['sparse']:.4f}; "
               f"groups nonzero {metrics['groups']['nonzero']} / {metrics['groups']['total']} "
               f"(k = {metrics['groups']['k']}); exact k in every scope: {metrics['exact_k']}")
    for s in metrics["scopes"]:
        click.echo(f"  {s['name']:<40} total {s['total']:>5}  k {s['k']:>5}  nonzero {s['nonzero']:>5}")
    click.echo(f"run directory: {out}")


@click.command("prune")
@click.argument("run_dir", type=_RUN_DIR)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def prune_cmd(run_dir: Path, as_json: bool) -> None:
    """Surgery on RUN_DIR's sparse model: remove zero groups, check equivalence, write pruned.* + plan."""
    from hwprune.pipeline.steps import step_prune

    summary = step_prune(run_dir)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    p, m = summary["params"], summary["macs"]
    click.echo(f"params {p['sparse']:,} -> {p['pruned']:,}; MACs {m['sparse']:,} -> {m['pruned']:,}; "
               f"accuracy {summary['accuracy']['sparse']:.4f} -> {summary['accuracy']['pruned']:.4f}; "
               f"max |diff| {summary['max_abs_diff']:.2e}")


@click.command("nm")
@click.argument("run_dir", type=_RUN_DIR)
@click.option("--epochs", type=int, default=2, show_default=True, help="epochs of the N:M phase")
@click.option("--lam", type=float, default=0.05, show_default=True, help="lambda of the batched SEF prox")
def nm_cmd(run_dir: Path, epochs: int, lam: float) -> None:
    """N:M phase (profile's nm rules) on RUN_DIR's pruned model; writes nm.*."""
    from hwprune.pipeline.steps import PipelineOptions, step_nm
    from hwprune.training.config import load_run_config

    info = step_nm(run_dir, load_run_config(run_dir), PipelineOptions(nm_epochs=epochs, nm_lam=lam))
    if info is None:
        raise ConfigError(f"{run_dir}/profile.yaml has no nm rule; nothing to do")
    click.echo(f"N:M {info['pattern']} on {len(info['layers'])} layers; accuracy {info['accuracy_before']:.4f} -> "
               f"{info['accuracy']:.4f}; blocks {info['blocks']}, "
               f"max nonzero per block {info['max_nonzero_per_block']}")


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
