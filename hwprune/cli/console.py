"""What the pipeline commands print: JSON results and the human summaries of a train job and a run.

Every summary says what happened, not only the headline numbers: which step chose the removed
groups, the accuracy before and after the fine-tune, requested vs achieved sparsity, the latency
budget vs the measurement, and, loudly, a timing backend that is not the profile's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from hwprune.training.artifacts import TrainMetrics
    from hwprune.training.runconfig import PipelineOptions

__all__ = ["echo_json", "echo_train_summary", "echo_run_summary", "pipeline_options", "fmt"]


def echo_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout (the ``--json`` of every command)."""
    click.echo(json.dumps(obj, indent=2, default=str))


def fmt(v: Any, spec: str = ".4f") -> str:
    """A number formatted, or ``-`` for None."""
    return "-" if v is None else format(v, spec)


def _warn(text: str) -> None:
    click.secho(f"WARNING: {text}", fg="yellow", bold=True, err=True)


def echo_train_summary(m: TrainMetrics) -> None:
    """Accuracies (test: dense -> final; validation: every stage), who chose the groups, sparsity per scope."""
    from hwprune.training.artifacts import ZERO_CAUSES, describe_selection

    v = m.val_accuracy
    click.echo(f"test accuracy ({m.splits.test} images): dense {fmt(m.test_accuracy.dense)} -> {m.final_stage} "
               f"{fmt(m.test_accuracy.final)}")
    if m.splits.val:
        click.echo(f"validation accuracy ({m.splits.val} images): dense {fmt(v.dense)}, after the sparse phase "
                   f"{fmt(v.sparse)}, after the projection (before the fine-tune) {fmt(v.projected)}, after the "
                   f"fine-tune {fmt(v.final)}")
    click.echo(f"groups: {describe_selection(m.groups)}; exact k in every scope: {m.exact_k}")
    asked = f"requested sparsity {m.sparsity:g}" if m.budget == "sparsity" else "k per scope given (latency budget)"
    click.echo(f"sparsity: {asked}; per scope k = ceil((1 - s) * groups), achieved = removed / groups:")
    short = {c: c for c in ZERO_CAUSES}
    for s in m.scopes:
        by = ", ".join(f"{short[c]} {n}" for c, n in s.zeroed_by.items() if n) or "-"
        click.echo(f"  {s.name:<36} groups {s.total:>5}  k {s.k:>5}  kept {s.nonzero:>5}  "
                   f"achieved {s.achieved_sparsity:.3f}  removed by: {by}")
    if m.budget == "sparsity" and any(abs(s.achieved_sparsity - m.sparsity) > 1e-9 for s in m.scopes):
        click.echo(f"  (achieved differs from the requested {m.sparsity:g} where (1 - s) * groups is not an "
                   "integer: k is rounded up, so fewer groups are removed)")


def echo_run_summary(report: Mapping[str, Any]) -> None:
    """The terminal table of a run, then every line that qualifies its numbers (module docstring)."""
    from rich.console import Console

    from hwprune.report.render import summary_table

    timing = report.get("timing") or {}
    if timing.get("fallback_note"):
        _warn(timing["fallback_note"])
    Console().print(summary_table(report))
    sel = report.get("selection") or {}
    if sel.get("text"):
        click.echo(f"groups: {sel['text']}")
    val = report.get("val_accuracy") or {}
    if val.get("val_images"):
        click.echo(f"validation accuracy ({val['val_images']} images): after the projection (before the fine-tune) "
                   f"{fmt(val.get('projected'))}, after the fine-tune {fmt(val.get('final'))}")
    nm = report.get("nm")
    if nm:
        nv = nm.get("val_accuracy") or {}
        click.echo(f"N:M {nm['pattern']}: validation accuracy before {fmt(nv.get('dense'))}, after the N:M projection "
                   f"{fmt(nv.get('projected'))}, after its fine-tune {fmt(nv.get('final'))}")
    lb = report.get("latency_budget")
    if lb:
        click.echo(f"latency budget {fmt(lb['budget_ms'])} ms at batch 1: measured {fmt(lb['measured_ms'])} ms "
                   f"(miss {lb['miss']:+.1%}, met: {lb['met']})")
    for w in report.get("warnings", []):
        _warn(w)


def pipeline_options(resume_dir: Path | None, given: Mapping[str, Any]) -> PipelineOptions:
    """The run's later-step options: recorded (resume) or a run config's (``--config``), then ``given``."""
    from hwprune.cli.jobopts import ConfigValues
    from hwprune.training.runconfig import PipelineOptions
    from hwprune.training.rundir import RunDir

    base: dict[str, Any] = {}
    if resume_dir is not None and (resume_dir / "config.yaml").exists():
        base = RunDir.open(resume_dir).config.pipeline.to_dict()
    else:
        ctx = click.get_current_context(silent=True)
        values = ctx.meta.get("hwprune.config") if ctx is not None else None
        if isinstance(values, ConfigValues):
            base = dict(values.pipeline)
    merged = {**base, **{k: v for k, v in given.items() if v is not None}}
    return PipelineOptions.from_mapping(merged, source="pipeline options")
