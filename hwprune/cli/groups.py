"""``hwprune groups --profile P --model M``: show the groups a profile makes on a model."""

from __future__ import annotations

import json
from typing import Any

import click

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
@click.option("--input-size", type=click.IntRange(min=1), default=32, show_default=True, help="Input height/width.")
@click.option("--in-channels", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--num-classes", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--phase", type=click.Choice(["structured", "nm"]), default="structured", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print GroupSet.to_json() instead of a table.")
def groups(profile_name: str, model_name: str, input_size: int, in_channels: int, num_classes: int, phase: str,
           as_json: bool) -> None:
    """Print per layer: granularity, group count, elements, d_i range and scope."""
    import torch

    from hwprune.groups import build_groups
    from hwprune.models import create_model
    from hwprune.profiles import load_profile

    prof = load_profile(profile_name)
    model = create_model(model_name, num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    x = torch.zeros(1, in_channels, input_size, input_size)
    gs = build_groups(model.eval(), prof, x, phase)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(gs.to_json(), indent=2))
        return
    click.echo(format_table(gs.summary()))
    for d in gs.dense:
        click.echo(f"dense: {d['layer']} ({d['reason']})")
    click.echo(f"{gs.num_groups} groups in {gs.num_scopes} scopes; {len(gs.ungrouped)} parameters ungrouped")


COMMANDS = [groups]
