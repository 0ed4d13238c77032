"""``hwprune latency-table``: time every conv/linear of a model alone at several widths (cached)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from hwprune.cli.modelopts import model_from_options, model_input_options

__all__ = ["COMMANDS", "latency_table_cmd"]


def _parse_widths(text: str | None) -> list[int] | None:
    from hwprune.base.errors import ConfigError

    if not text:
        return None
    try:
        widths = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--widths: expected comma-separated integers such as 8,16,32, got '{text}'") from None
    if not widths or min(widths) < 1:
        raise ConfigError(f"--widths: every width must be an integer >= 1, got '{text}'")
    return widths


@click.command("latency-table")
@click.option("--profile", "profile", required=True, help="hardware profile name or YAML path")
@click.option("--model", "model", required=True, help="registered model name (hwprune.models)")
@model_input_options
@click.option("--widths", "widths_text", help="widths for every prunable layer, e.g. 8,16,32 [default: grid]")
@click.option("--points", type=click.IntRange(min=2), default=8, show_default=True, help="grid size per layer")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--iters", type=click.IntRange(min=1), default=50, show_default=True, help="timed runs per round")
@click.option("--cache", "cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="cache file [default: $HWPRUNE_LATENCY_CACHE or ~/.cache/hwprune/latency_cache.json]")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("latency_table"),
              show_default=True, help="directory for latency_table.{json,csv,png}")
@click.option("--json", "as_json", is_flag=True, help="print latency_table.json")
def latency_table_cmd(profile: str, model: str, input_size: int, in_channels: int, num_classes: int,
                      widths_text: str | None, points: int, batch: int, iters: int, cache: Path | None,
                      out: Path, as_json: bool) -> None:
    """Time each conv/linear of MODEL alone on PROFILE's backend at several output widths."""
    from hwprune.base.outpath import check_out_dir, check_out_file
    from hwprune.report.plots import plot_latency_table
    from hwprune.runtime.latency import build_latency_table, default_cache_path, table_bench_spec
    from hwprune.training.job import resolve_profile

    check_out_dir(out)  # before any timing: the table is written there at the end
    if cache is not None:
        check_out_file(cache, option="--cache", replace=True)
    widths = _parse_widths(widths_text)
    prof = resolve_profile(profile)
    net, example = model_from_options(model, input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                                      eval_mode=False)
    bench = dataclasses.replace(table_bench_spec(prof.bench, batch), iters=iters)
    table = build_latency_table(net, prof, example, bench=bench,
                                batch=batch, widths=widths, max_points=points,
                                cache_path=cache or default_cache_path())
    jp, cp = table.save(out)
    png = plot_latency_table(table, out / "latency_table.png")
    if as_json:
        click.echo(jp.read_text())
        return
    click.echo(f"{'layer':<36} {'kind':<6} {'in':>5} {'full':>5}  widths -> ms")
    for name, c in table.layers.items():
        pts = " ".join(f"{w}:{ms:.4f}" for w, ms in zip(c.widths, c.ms, strict=True))
        click.echo(f"{name:<36} {c.spec.kind:<6} {c.spec.in_channels:>5} {c.spec.out_channels:>5}  {pts}")
    click.echo(f"sum at full width {table.total():.4f} ms; cache hits {table.meta['cache_hits']}, "
               f"misses {table.meta['cache_misses']}")
    click.echo(f"written: {jp}, {cp}, {png}")


COMMANDS = [latency_table_cmd]
