"""``hwprune bundle RUN_DIR --out DIR [--int8]`` and ``hwprune bundle --verify DIR``."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["COMMANDS", "bundle"]


@click.command("bundle")
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None, help="Bundle directory to create.")
@click.option("--int8", is_flag=True, help="Add an ONNX Runtime static int8 (QDQ, per-channel) model.")
@click.option("--calib-samples", type=click.IntRange(min=1), default=128, show_default=True,
              help="Calibration images for --int8.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out directory.")
@click.option("--verify", "verify_dir", type=click.Path(path_type=Path), default=None,
              help="Verify an existing bundle (hashes + parity) instead of building one.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest / verify report as JSON.")
def bundle(run_dir: Path | None, out_dir: Path | None, int8: bool, calib_samples: int, force: bool,
           verify_dir: Path | None, as_json: bool) -> None:
    """Package a run's ONNX model as a verified deployment bundle, or verify one."""
    from hwprune.base.errors import ConfigError
    from hwprune.base.files import read_json
    from hwprune.pipeline.bundle import MANIFEST, make_bundle, verify_bundle

    if verify_dir is not None:
        if run_dir is not None or out_dir is not None:
            raise ConfigError("--verify DIR takes no RUN_DIR or --out")
        rep = verify_bundle(verify_dir)
        int8_text = (f"; int8 parity max abs diff {rep.int8_max_abs_diff:.3g} (tolerance {rep.int8_tolerance:.3g})"
                if rep.int8_max_abs_diff is not None else "")
        click.echo(json.dumps(rep.to_dict(), indent=2) if as_json else
                   f"OK {rep.path}: manifest hash and {rep.files_checked} file hashes match, fp32 parity max abs diff "
                   f"{rep.max_abs_diff:.3g} (atol {rep.atol:g}, rtol {rep.rtol:g}){int8_text}")
        return
    if run_dir is None or out_dir is None:
        raise ConfigError("usage: hwprune bundle RUN_DIR --out DIR [--int8], or hwprune bundle --verify DIR")
    path = make_bundle(run_dir, out_dir, int8=int8, calib_samples=calib_samples, overwrite=force)
    manifest = read_json(path / MANIFEST, what="bundle manifest")
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    click.echo(f"bundle written to {path} ({len(manifest['files'])} files + {MANIFEST} + its hash)")
    q = manifest.get("int8")
    if q:
        acc = q["accuracy"]
        speed = ", ".join(f"b={r['batch']} {r['speedup']:.2f}x" for r in q["latency"]["speedup"])
        click.echo(f"int8: ORT accuracy {acc['onnx_int8']:.4f} (fp32 {acc['onnx_fp32']:.4f}, "
                   f"{acc['test_samples']} test images); int8 vs fp32 model timed on {q['latency']['timed_on']}: "
                   f"speed-up {speed}")


COMMANDS: list[click.Command] = [bundle]
