"""Every CLI command: ``--help`` works, and one real invocation (or a clean bad-input exit 2) per command."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from hwprune.cli import cli
from hwprune.profiles import load_profile
from hwprune.training.config import TrainJobConfig
from hwprune.training.runconfig import RunConfig
from hwprune.training.rundir import RunDir


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    """Every command and sub-command of ``group`` by its path, e.g. ``("profile", "list")``."""
    out: dict[tuple[str, ...], click.Command] = {}
    for name, cmd in sorted(group.commands.items()):
        out[(*prefix, name)] = cmd
        if isinstance(cmd, click.Group):
            out.update(_commands(cmd, (*prefix, name)))
    return out


COMMANDS = list(_commands(cli))
LEAVES = [p for p, cmd in _commands(cli).items() if not isinstance(cmd, click.Group)]


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "hwprune")
def test_help_of_every_command(path: tuple[str, ...]) -> None:
    r = CliRunner().invoke(cli, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("Usage:") and "Traceback" not in r.output


def _no_nm_run(tmp: Path) -> Path:
    """A run directory with a config and a profile without nm rules (no training needed)."""
    root = tmp / "run"
    RunDir.create(root, RunConfig(train=TrainJobConfig(profile="generic-channel"), profile="generic-channel"),
                  load_profile("generic-channel"), fresh=True)
    return root


# One invocation per leaf command: (arguments, expected exit code, text the output must contain).
# {tmp} is a fresh directory, {file} an existing empty file, {run} a run directory without nm rules.
INVOCATIONS: dict[tuple[str, ...], tuple[list[str], int, str]] = {
    ("profile", "list"): (["profile", "list"], 0, "x86-avx2-ort"),
    ("profile", "show"): (["profile", "show", "generic-channel"], 0, "name: generic-channel"),
    ("profile", "validate"): (["profile", "validate", "generic-channel", "{file}"], 2, "INVALID"),
    ("profile", "calibrate"): (["profile", "calibrate", "--kinds", "bogus", "--out", "{tmp}/c.yaml"], 2, "bogus"),
    ("bench",): (["bench", "--compare", "{file}"], 2, "DENSE.onnx PRUNED.onnx"),
    ("export",): (["export", "--model", "lenet5", "--in-channels", "1", "--input-size", "28", "--out",
                   "{tmp}/lenet5.onnx"], 0, "max abs diff"),
    ("train",): (["train", "--data-seed", "-1", "--out", "{tmp}/t"], 2, "data_seed must be >= 0"),
    ("prune",): (["prune", "{tmp}"], 2, "config.yaml: missing"),
    ("nm",): (["nm", "{run}"], 2, "no nm rule"),
    ("run",): (["run", "--sparsity", "1", "--out", "{tmp}/r"], 2, "[0, 1)"),
    ("select",): (["select"], 0, "machine:"),
    ("groups",): (["groups", "--profile", "generic-channel", "--model", "lenet5", "--in-channels", "1",
                   "--input-size", "28"], 0, "groups in"),
    ("bundle",): (["bundle", "{tmp}"], 2, "--out"),
    ("latency-table",): (["latency-table", "--profile", "generic-channel", "--model", "lenet5", "--in-channels",
                          "1", "--input-size", "28", "--widths", "8,x"], 2, "--widths"),
}


def test_every_command_has_an_invocation() -> None:
    assert set(INVOCATIONS) == set(LEAVES), "add the new command to INVOCATIONS"


@pytest.mark.parametrize("path", sorted(INVOCATIONS), ids=" ".join)
def test_one_invocation_per_command(path: tuple[str, ...], tmp_path: Path) -> None:
    args, code, needle = INVOCATIONS[path]
    (tmp_path / "empty.yaml").write_text("")
    subs = {"{tmp}": str(tmp_path), "{file}": str(tmp_path / "empty.yaml")}
    if any("{run}" in a for a in args):
        subs["{run}"] = str(_no_nm_run(tmp_path))
    for key, value in subs.items():
        args = [a.replace(key, value) for a in args]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == code, r.output
    assert needle in r.output and "Traceback" not in r.output, r.output
    if code == 2 and path != ("profile", "validate"):
        assert len(r.output.strip().splitlines()) == 1, r.output  # one line naming the problem


def test_export_of_a_bare_model_writes_a_checked_report(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["export", "--model", "mlp", "--in-channels", "1", "--input-size", "4", "--out",
                                 str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "m.export.json").read_text())
    report = record["report"]
    assert record["source"] == "model mlp" and record["stage"] is None and record["onnx"] == "m.onnx"
    assert report["passed"] and report["max_abs_diff"] <= report["atol"] + report["rtol"]
