"""``hwprune bench``: time one ONNX model, or compare a dense and a pruned one, on ORT, OpenVINO or TensorRT."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

__all__ = ["COMMANDS", "bench"]

_ROW = "{batch:>6} {median_ms:>11.4f} {p90_ms:>10.4f} {p99_ms:>10.4f} {min_ms:>10.4f} {throughput_per_s:>12.1f}"
_HEAD = f"{'batch':>6} {'median_ms':>11} {'p90_ms':>10} {'p99_ms':>10} {'min_ms':>10} {'samples/s':>12}"


def _spec(profile: str | None, overrides: dict[str, Any]) -> tuple[Any, str | None]:
    """The timing spec and, when the profile's backend is missing here and none was asked for, the fallback note."""
    from hwprune.pipeline.steps import fallback_spec
    from hwprune.profiles import BenchSpec, load_profile

    spec = load_profile(profile).bench if profile else BenchSpec()
    changes = {k: v for k, v in overrides.items() if v not in (None, ())}
    if changes.get("backend") == "tensorrt" and "provider" not in changes:
        changes["provider"] = "cuda"
    explicit = any(k in changes for k in ("backend", "provider", "precision"))
    return fallback_spec(dataclasses.replace(spec, **changes), allow=not explicit, who=f"profile {profile}")


def _print_table(title: str, stats: list[dict[str, Any]]) -> None:
    click.echo(title)
    click.echo(_HEAD)
    for s in stats:
        click.echo(_ROW.format(**s))


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--profile", "profile", default=None, help="Hardware profile name or YAML path (its bench: block).")
@click.option("--compare", "compare_", is_flag=True, help="Time DENSE.onnx PRUNED.onnx interleaved; print speed-up.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt"]), default=None)
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None)
@click.option("--batch-size", "batch_sizes", type=click.IntRange(min=1), multiple=True, help="Repeatable.")
@click.option("--iters", type=click.IntRange(min=1), default=None)
@click.option("--warmup", type=click.IntRange(min=0), default=None)
@click.option("--repeats", type=click.IntRange(min=1), default=None, help="Fresh sessions; medians over them.")
@click.option("--threads", type=click.IntRange(min=0), default=None, help="intra-op threads, 0 = runtime default.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write JSON here.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def bench(models: tuple[Path, ...], profile: str | None, compare_: bool, backend: str | None, provider: str | None,
          precision: str | None, batch_sizes: tuple[int, ...], iters: int | None, warmup: int | None,
          repeats: int | None, threads: int | None, out: Path | None, force: bool, as_json: bool) -> None:
    """Time MODELS (one .onnx; two with --compare) in a fresh subprocess; print median/p90/p99 latency."""
    from hwprune.base.errors import ConfigError
    from hwprune.runtime.bench import compare, measure
    from hwprune.runtime.envinfo import collect_env

    if len(models) != (2 if compare_ else 1):
        raise ConfigError(f"expected {'DENSE.onnx PRUNED.onnx with --compare' if compare_ else 'one MODEL.onnx'}, "
                          f"got {len(models)} path(s)")
    from hwprune.runtime.onnxfile import check_onnx_file

    for path in models:
        check_onnx_file(path)
    if out is not None:
        from hwprune.base.outpath import check_out_file

        check_out_file(out, replace=force)
    spec, note = _spec(profile, dict(backend=backend, provider=provider, precision=precision, batch_sizes=batch_sizes,
                                     iters=iters, warmup=warmup, repeats=repeats, threads=threads))
    if note:
        click.secho(f"WARNING: {note}", fg="yellow", bold=True, err=True)
    click.echo(f"timing {', '.join(str(m) for m in models)} on {spec.backend}/{spec.provider}/{spec.precision} in a "
               f"fresh worker ({spec.repeats} sessions x {spec.iters} iterations)...", err=True)
    if compare_:
        result: dict[str, Any] = compare(models[0], models[1], spec)
    else:
        result = {"model": str(models[0]), "results": [s.to_dict() for s in measure(models[0], spec)]}
    result.update(spec=dataclasses.asdict(spec), env=collect_env(include_gpu=spec.provider == "cuda"),
                  fallback_note=note)
    if out is not None:
        from hwprune.base.files import atomic_write_json

        atomic_write_json(out, result)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"backend={spec.backend} provider={spec.provider} precision={spec.precision} threads={spec.threads} "
               f"warmup={spec.warmup} iters={spec.iters} repeats={spec.repeats}")
    if not compare_:
        _print_table(str(models[0]), result["results"])
        return
    _print_table(f"dense:  {models[0]}", result["dense"])
    _print_table(f"pruned: {models[1]}", result["pruned"])
    for row in result["speedup"]:
        click.echo(f"speed-up at batch {row['batch']}: {row['speedup']:.3f}x")


COMMANDS: list[click.Command] = [bench]
