"""``hwprune select [--json] [--measure MODEL] [--sparsity S]``: rank the hardware profiles for this machine."""

from __future__ import annotations

import json
from typing import Any

import click

from hwprune.cli.modelopts import model_input_options

__all__ = ["COMMANDS", "select"]


@click.command("select")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--measure", "model", default=None, metavar="MODEL",
              help="Also prune MODEL under each matching profile and time it here on the profile's backend.")
@click.option("--sparsity", type=float, default=0.5, show_default=True, help="Group sparsity for --measure.")
@model_input_options
@click.option("--iters", type=int, default=None, help="Timed iterations per round (default: the profile's).")
@click.option("--repeats", type=int, default=None, help="Timing rounds (default: the profile's).")
def select(as_json: bool, model: str | None, sparsity: float, input_size: int, in_channels: int, num_classes: int,
           iters: int | None, repeats: int | None) -> None:
    """Detect this machine and rank the bundled profiles, with the reasons for each score."""
    from hwprune.pipeline.select import measure_profiles
    from hwprune.profiles.machine import detect_machine, rank_profiles

    facts = detect_machine()
    ranked = rank_profiles(facts)
    rows: list[dict[str, Any]] | None = None
    if model is not None:
        rows = measure_profiles(model, facts, sparsity=sparsity, input_size=input_size, in_channels=in_channels,
                                num_classes=num_classes, iters=iters, repeats=repeats)
    best = next((r["profile"] for r in rows if r["recommended"]), None) if rows is not None else None
    static = next((m.name for m in ranked if m.matched), None)
    why = _why_rankings_differ(static, best, model or "", sparsity)
    if as_json:
        out: dict[str, Any] = {"machine": facts.to_dict(), "ranking": [m.to_dict() for m in ranked],
                               "static_top": static}
        if rows is not None:
            out.update(measured=rows, recommended=best, why_rankings_differ=why)
        click.echo(json.dumps(out, indent=2))
        return
    gpus = ", ".join(f"{n} (cc {c})" for n, c in facts.gpus) or "none"
    isa = ",".join(sorted(f for f in facts.isa if f.startswith(("avx", "fma", "neon", "asimd", "sve", "amx"))))
    click.echo(f"machine: {facts.arch} {facts.cpu_vendor} '{facts.cpu_model}', {facts.cores} cores, "
               f"isa {isa or '-'}, gpus {gpus}")
    for m in ranked:
        status = "match" if m.matched else "no   "
        click.echo(f"{m.name:<24} {status} score={m.score:<6g} {'; '.join(m.reasons)}")
    if rows is None:
        return
    click.echo(f"\nmeasured: {model} at sparsity {sparsity:g} (ONNX Runtime CPU, batch 1)")
    for r in rows:
        if r["status"] != "measured":
            click.echo(f"{r['profile']:<24} skipped: {r['reason']}")
            continue
        star = "*" if r["recommended"] else " "
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        click.echo(f"{star}{r['profile']:<23} median {r['median_ms']:.4f} ms  p90 {r['p90_ms']:.4f} ms  "
                   f"speed-up {speed}  params {r['params']}  MACs {r['macs']}  ({r['reason']})")
    click.echo(f"recommended: {best}" if best else "recommended: none (no timed profile removed anything here)")
    if why:
        click.echo(f"why the rankings differ: {why}")


def _why_rankings_differ(static: str | None, best: str | None, model: str, sparsity: float) -> str | None:
    """One sentence on why the static top profile and the measured recommendation differ (None: they agree)."""
    if not best or not static or best == static:
        return None
    return (f"the static ranking (what --profile auto uses; top: {static}) scores how well each profile's device, "
            "ISA and runtime match this machine, without timing anything; the measured one (top: "
            f"{best}) times {model} pruned at {sparsity:g} under each profile here, at batch 1, so the model's layer "
            "widths, the alignment each profile keeps and timing noise decide it. "
            f"Use --profile {best} to prune for the measured winner.")


COMMANDS: list[click.Command] = [select]
