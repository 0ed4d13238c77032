"""``hwprune profile list | show NAME | validate PATH... | calibrate``: inspect, check and measure hardware profiles.

``list``/``show``/``validate`` are pure Python + PyYAML (no torch), so validating a profile is instant.
``calibrate`` measures this machine's width staircase and writes a calibrated profile.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from hwprune.profiles import HardwareProfile

__all__ = ["COMMANDS", "profile"]


def _summary(p: HardwareProfile) -> dict[str, Any]:
    """One JSON-ready summary row for ``profile list``."""
    dev, b = p.device, p.bench
    return {"name": p.name, "device": f"{dev.kind}:{dev.vendor}/{dev.arch}",
            "runtime": f"{b.backend}/{b.provider}/{b.precision}", "alignment": p.alignment,
            "nm": [f"{n}:{m}" for n, m in p.nm_patterns], "description": p.description}


@click.group("profile")
def profile() -> None:
    """Inspect and validate hardware profiles (bundled names or .yaml paths)."""


@profile.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of text.")
def list_cmd(as_json: bool) -> None:
    """List the bundled profiles, then the user's (calibrated) ones: name, device, runtime, alignment, N:M."""
    from hwprune.profiles import list_profiles, load_profile
    from hwprune.profiles.io import load_user_profiles

    bundled = list_profiles()
    rows = [{**_summary(load_profile(name)), "source": "bundled"} for name in bundled]
    rows += [{**_summary(p), "source": str(p.source)} for p in load_user_profiles() if p.name not in bundled]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        nm = ",".join(r["nm"]) or "-"
        user = "" if r["source"] == "bundled" else f"  (user: {r['source']})"
        click.echo(f"{r['name']:<24} {r['device']:<26} {r['runtime']:<26} align={r['alignment']:<3} nm={nm}{user}")


@profile.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
def show_cmd(name: str, as_json: bool) -> None:
    """Print the resolved profile NAME (bundled name or .yaml path)."""
    from hwprune.profiles import load_profile, profile_to_dict, profile_to_yaml

    p = load_profile(name)
    click.echo(json.dumps(profile_to_dict(p), indent=2) if as_json else profile_to_yaml(p).rstrip("\n"))


@profile.command("validate")
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON list: {path, valid, name, rules, error}")
@click.pass_context
def validate_cmd(ctx: click.Context, paths: tuple[str, ...], as_json: bool) -> None:
    """Check each profile file (or bundled name); one OK/error line each, exit 2 if any is invalid."""
    from hwprune.base.errors import HwpruneError
    from hwprune.profiles import load_profile

    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            p = load_profile(path)
        except HwpruneError as exc:
            results.append({"path": path, "valid": False, "error": str(exc)})
            if not as_json:
                click.echo(f"INVALID {exc}", err=True)
            continue
        structured, nm = len(p.rules_for_phase("structured")), len(p.rules_for_phase("nm"))
        results.append({"path": path, "valid": True, "name": p.name,
                        "rules": {"total": len(p.rules), "structured": structured, "nm": nm}})
        if not as_json:
            click.echo(f"OK      {path} (name {p.name}, {len(p.rules)} rules: {structured} structured, {nm} nm)")
    if as_json:
        click.echo(json.dumps(results, indent=2))
    if not all(r["valid"] for r in results):
        ctx.exit(2)


def _fallback_block(backend: str, facts: Any) -> int:
    """Alignment of the best bundled profile for this machine with the same backend (8 if none matches)."""
    from hwprune.profiles import list_profiles, load_profile
    from hwprune.profiles.machine import rank_profiles

    same = [load_profile(n) for n in list_profiles()]
    same = [p for p in same if p.bench.backend == backend] or same
    by_name = {p.name: p for p in same}
    best = next((m for m in rank_profiles(facts, same) if m.matched and by_name[m.name].alignment > 1), None)
    return by_name[best.name].alignment if best is not None else 8


@profile.command("calibrate")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt"]), default="onnxruntime",
              show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="Runtime intra-op threads (0 = runtime default).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Profile YAML to write [default: <user profile dir>/calibrated-<backend>-t<threads>-b<batch>.yaml].")
@click.option("--name", default=None, help="Profile name [default: the file stem].")
@click.option("--kinds", default=",".join(("conv", "depthwise", "linear", "attention_mlp")), show_default=True,
              help="Layer kinds to measure.")
@click.option("--min-width", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-block", type=click.IntRange(min=2), default=32, show_default=True,
              help="Largest block considered; widths min-width .. min-width + 3 * max-block are measured.")
@click.option("--iters", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--repeats", type=click.IntRange(min=2), default=5, show_default=True, help="Interleaved rounds.")
@click.option("--force", is_flag=True, help="Replace an existing profile file at --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def calibrate_cmd(backend: str, threads: int, batch: int, out: Path | None, name: str | None, kinds: str,
                  min_width: int, max_block: int, iters: int, warmup: int, repeats: int, force: bool,
                  as_json: bool) -> None:
    """Measure this machine's width staircase per layer kind on BACKEND; write a calibrated profile."""
    from hwprune.base.outpath import check_out_file
    from hwprune.profiles.io import user_profiles_dir
    from hwprune.profiles.machine import detect_machine
    from hwprune.runtime.calibrate import CalibrationSettings, calibrate, write_calibration

    settings = CalibrationSettings(backend=backend, provider="cuda" if backend == "tensorrt" else "cpu",
                                   threads=threads, batch=batch, kinds=tuple(k for k in kinds.split(",") if k),
                                   min_width=min_width, max_block=max_block, iters=iters, warmup=warmup,
                                   repeats=repeats)
    out = check_out_file(out or user_profiles_dir() / f"calibrated-{backend}-t{threads}-b{batch}.yaml",
                         replace=force)  # before the minutes of measuring
    facts = detect_machine()
    result = calibrate(settings, facts=facts)
    prof, files = write_calibration(result, out, name=name, fallback_block=_fallback_block(backend, facts))
    if as_json:
        click.echo(json.dumps({"profile": str(files["profile"]), "files": {k: str(v) for k, v in files.items()},
                               "seconds": result.seconds, "curves": {k: c.staircase.to_dict()
                                                                     for k, c in result.curves.items()}}, indent=2))
        return
    for kind, c in result.curves.items():
        flag = "AMBIGUOUS " if c.staircase.ambiguous else ""
        click.echo(f"{kind:<14} block {c.staircase.block:<3} {flag}{c.staircase.reason}")
    rules = ", ".join(f"{r.match}: {getattr(r.granularity, 'block', 1)}" for r in prof.rules)
    click.echo(f"profile {prof.name} ({rules}) written to {files['profile']} in {result.seconds:.0f} s; "
               f"curves: {files['csv']}, {files['png']}")


COMMANDS: list[click.Command] = [profile]
