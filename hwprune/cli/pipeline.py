"""``hwprune train``, ``prune``, ``nm`` and ``run``: thin wrappers over ``hwprune.pipeline.steps``.

Every check that can fail on the user's input runs before anything is written: the output
directory (``RunDir.check_target``: writable, not a file, not a finished run unless ``--force``
or ``--resume``), the options, ``--latency-budget``'s syntax; the train job then checks the
profile, method, data and model before it creates ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from hwprune.base.errors import ConfigError
from hwprune.cli.console import echo_json, echo_train_summary, pipeline_options
from hwprune.cli.jobopts import build_job_config, explicit, job_options, resume_job_config

__all__ = ["COMMANDS"]

_RUN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_FORCE = click.option("--force", is_flag=True, help="overwrite a finished (or interrupted) run in --out")
_RESUME = click.option("--resume/--no-resume", default=False,
                       help="continue the run in --out with its recorded options (after Ctrl-C or a kill)")


def _parse_sparsity(text: str | None) -> list[float] | None:
    from hwprune.base.checks import check_sparsity

    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sparsity: expected a number or a comma-separated list, got '{text}'") from None
    if not values:
        raise ConfigError(f"--sparsity: expected a number or a comma-separated list, got '{text}'")
    return [check_sparsity(v, what="--sparsity") for v in values]


def _job_config(out: Path, resume: bool, options: dict[str, Any], **overrides: Any) -> Any:
    """The job: the one recorded in ``out`` when resuming one, else the options (+ ``--config``)."""
    from hwprune.training.rundir import RunDir

    if resume and (out / "config.yaml").exists():
        return resume_job_config(RunDir.open(out).config, options, where=out, **overrides)
    return build_job_config(options, **overrides)


@click.command("train")
@job_options
@click.option("--sparsity", type=float, help="fraction of groups removed per scope [default: 0.5]")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="run directory")
@_RESUME
@_FORCE
@click.option("--json", "as_json", is_flag=True, help="print metrics.json")
def train_cmd(out: Path, resume: bool, force: bool, as_json: bool, **options: Any) -> None:
    """Dense training, the method's sparse phase to exactly k groups per scope, surgery, fine-tune."""
    from hwprune.pipeline.steps import step_train
    from hwprune.training.distributed import is_main_process, shutdown_distributed
    from hwprune.training.rundir import RunDir

    RunDir.check_target(out, resume=resume, force=force)
    cfg = _job_config(out, resume, options)
    m = step_train(cfg, out, resume=resume).metrics
    main_rank = is_main_process()
    shutdown_distributed()  # no-op outside torchrun
    if not main_rank:
        return
    if as_json:
        echo_json(m.to_dict())
        return
    echo_train_summary(m)
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
        echo_json(s.to_dict())
        return
    p, m, acc = s.params, s.macs, s.val_accuracy
    when = "after" if s.after_finetune else "before"
    accuracy = (f"validation accuracy {acc['sparse']:.4f} -> {acc['pruned']:.4f} ({when} the fine-tune); "
                if acc.get("sparse") is not None and acc.get("pruned") is not None else "")
    click.echo(f"params {p['sparse']:,} -> {p['pruned']:,}; MACs {m['sparse']:,} -> {m['pruned']:,}; "
               f"{accuracy}max |diff| {s.max_abs_diff:.2e}")


@click.command("nm")
@click.argument("run_dir", type=_RUN_DIR)
@click.option("--epochs", type=click.IntRange(min=0), default=None,
              help="epochs of the N:M phase [default: as recorded in config.yaml]")
@click.option("--lam", type=click.FloatRange(min=0), default=None, help="lambda of the batched SEF prox "
              "[default: as recorded]")
@click.option("--json", "as_json", is_flag=True, help="print nm_summary.json")
def nm_cmd(run_dir: Path, epochs: int | None, lam: float | None, as_json: bool) -> None:
    """N:M phase (profile's nm rules) on RUN_DIR's pruned model; writes nm.* and records its options."""
    from hwprune.pipeline.steps import open_run, step_nm

    rd = open_run(run_dir)
    if not rd.profile.has_nm:
        raise ConfigError(f"{run_dir}/profile.yaml has no nm rule; nothing to do")
    recorded = rd.config.pipeline
    opts = dataclasses.replace(recorded, nm_epochs=recorded.nm_epochs if epochs is None else epochs,
                               nm_lam=recorded.nm_lam if lam is None else lam)
    info = step_nm(rd, opts)
    assert info is not None  # the profile has nm rules (checked above)
    if as_json:
        echo_json(info.to_dict())
        return
    v = info.val_accuracy

    def acc(x: float | None) -> str:
        return f"{x:.4f}" if x is not None else "-"

    click.echo(f"N:M {info.pattern} on {len(info.layers)} layers; validation accuracy before the phase {acc(v.dense)}, "
               f"after the N:M projection {acc(v.projected)}, after the masked fine-tune {acc(v.final)}; "
               f"test accuracy {info.test_accuracy:.4f}; blocks {info.blocks}, max nonzero per block "
               f"{info.max_nonzero_per_block}")


def _check_budget(text: str | None, sparsities: list[float] | None) -> None:
    """Reject a malformed ``--latency-budget`` (or one combined with a sweep) before any work."""
    if text is None:
        return
    from hwprune.pipeline.budget import parse_budget

    if sparsities is not None and len(sparsities) > 1:
        raise ConfigError("--latency-budget prunes to one latency; it cannot be combined with a --sparsity list")
    parse_budget(text, dense_ms=1.0)  # syntax and range only; the dense latency is measured later


@click.command("run")
@job_options
@click.option("--sparsity", "sparsity_text", help="fraction of groups removed, or a list such as 0.3,0.5,0.7 "
              "(a sweep) [default: 0.5]")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="run directory")
@_RESUME
@_FORCE
@click.option("--bench-iters", type=click.IntRange(min=1), help="override the profile's timing iterations")
@click.option("--nm-epochs", type=click.IntRange(min=0), default=None,
              help="epochs of the N:M phase (profiles with nm rules) [default: 2]")
@click.option("--latency-budget", "latency_budget", help="prune to a latency at batch 1 instead of a sparsity: "
              "milliseconds (12.5) or a fraction of the dense latency (0.6x)")
@click.option("--json", "as_json", is_flag=True, help="print report.json (a sweep: sweep.json)")
def run_cmd(out: Path, sparsity_text: str | None, resume: bool, force: bool, bench_iters: int | None,
            nm_epochs: int | None, latency_budget: str | None, as_json: bool, **options: Any) -> None:
    """The whole pipeline: train -> surgery -> (N:M) -> ONNX export -> timing -> report.

    With no arguments: bundled digits data, a small CNN, the profile matching this machine.
    The parameters are the command's options (click passes each one).
    """
    from hwprune.pipeline.steps import run, sweep
    from hwprune.training.rundir import RunDir

    sparsities = _parse_sparsity(sparsity_text)
    _check_budget(latency_budget, sparsities)
    sweep_dirs = [out / f"s{s:g}" for s in sparsities] if sparsities and len(sparsities) > 1 else [out]
    if resume and (len(sweep_dirs) > 1 or latency_budget is not None):
        raise ConfigError("--resume continues one run; it cannot be combined with a --sparsity list or "
                          "--latency-budget (run again with --force to start over)")
    for target in sweep_dirs:
        RunDir.check_target(target, resume=resume, force=force)
    cfg = _job_config(out, resume, options,
                      sparsity=sparsities[0] if sparsities else None)
    opts = pipeline_options(out if resume else None, explicit({"bench_iters": bench_iters, "nm_epochs": nm_epochs}))
    if latency_budget is not None:
        from hwprune.pipeline.budget import run_with_budget
        from hwprune.training.job import check_job

        check_job(cfg)  # profile, method and its options before the latency table is measured
        res = run_with_budget(cfg, out, latency_budget, opts)
        report = RunDir.open(out).report() or {}
        if as_json:
            echo_json(report)
            return
        from hwprune.cli.console import echo_run_summary

        echo_run_summary(report)
        click.echo(f"(predicted {res['predicted_ms']:.4f} ms from the latency table; {len(res['iterations'])} "
                   f"pipeline run(s)); report: {out / 'report.md'}")
        return
    if len(sweep_dirs) > 1:
        assert sparsities is not None
        summary = sweep(cfg, sparsities, out, opts=opts)
        if as_json:
            echo_json(summary)
            return
        for p in summary["points"]:
            click.echo(f"  {p['label']:<24} accuracy {p['accuracy']:.4f}  latency {p['latency_ms']:.3f} ms")
        click.echo(f"sweep written to {out}/sweep.json and {out}/plots/pareto.png")
        return
    report = run(cfg, out, opts=opts, resume=resume)
    if as_json:
        echo_json(report)
        return
    from hwprune.cli.console import echo_run_summary

    echo_run_summary(report)
    click.echo(f"report: {out / 'report.md'}")


COMMANDS = [train_cmd, prune_cmd, nm_cmd, run_cmd]
