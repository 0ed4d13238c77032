"""``hwprune groups --profile P --model M``: show the groups a profile makes on a model."""

from __future__ import annotations

import json
from typing import Any

import click

from hwprune.cli.modelopts import model_from_options, model_input_options

__all__ = ["COMMANDS", "groups", "format_table"]

_COLUMNS = ("layer", "granularity", "groups", "elements", "d_min", "d_max", "scope", "note")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain aligned text table of ``GroupSet.summary()`` rows."""
    cells = [[f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in _COLUMNS] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=False)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)).rstrip() for row in cells]
    return "\n".join(lines)


@click.command("groups")
@click.option("--profile", "profile_name", required=True, help="Bundled profile name or .yaml path.")
@click.option("--model", "model_name", required=True, help="Registered model name (see hwprune.models).")
@model_input_options
@click.option("--phase", type=click.Choice(["structured", "nm"]), default="structured", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print GroupSet.to_json() instead of a table.")
def groups(profile_name: str, model_name: str, input_size: int, in_channels: int, num_classes: int, phase: str,
           as_json: bool) -> None:
    """Print per layer: granularity, group count, elements, d_i range and scope."""
    from hwprune.groups import build_groups
    from hwprune.profiles import load_profile

    prof = load_profile(profile_name)
    model, x = model_from_options(model_name, input_size=input_size, in_channels=in_channels, num_classes=num_classes)
    gs = build_groups(model, prof, x, phase)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(gs.to_json(), indent=2))
        return
    click.echo(format_table(gs.summary()))
    for d in gs.dense:
        click.echo(f"dense: {d['layer']} ({d['reason']})")
    click.echo(f"{gs.num_groups} groups in {gs.num_scopes} scopes; {len(gs.ungrouped)} parameters ungrouped")


COMMANDS = [groups]
