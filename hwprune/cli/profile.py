"""``hwprune profile list | show NAME | validate PATH...``: inspect and check hardware profiles.

Pure Python + PyYAML (no torch), so validating a profile is instant.
"""

from __future__ import annotations

import json
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
    """List the bundled profiles: name, device, runtime/precision, alignment, N:M."""
    from hwprune.profiles import list_profiles, load_profile

    rows = [_summary(load_profile(name)) for name in list_profiles()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        nm = ",".join(r["nm"]) or "-"
        click.echo(f"{r['name']:<24} {r['device']:<26} {r['runtime']:<26} align={r['alignment']:<3} nm={nm}")


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
@click.pass_context
def validate_cmd(ctx: click.Context, paths: tuple[str, ...]) -> None:
    """Check each profile file (or bundled name); one OK/error line each, exit 2 if any is invalid."""
    from hwprune.base.errors import HwpruneError
    from hwprune.profiles import load_profile

    failed = 0
    for path in paths:
        try:
            p = load_profile(path)
        except HwpruneError as exc:
            failed += 1
            click.echo(f"INVALID {exc}", err=True)
            continue
        structured, nm = len(p.rules_for_phase("structured")), len(p.rules_for_phase("nm"))
        click.echo(f"OK      {path} (name {p.name}, {len(p.rules)} rules: {structured} structured, {nm} nm)")
    if failed:
        ctx.exit(2)


COMMANDS: list[click.Command] = [profile]
