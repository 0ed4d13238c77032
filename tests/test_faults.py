"""Fault injection over every command: corrupt inputs, unwritable outputs, bad options, finished runs.

Every case must end with exit code 2, exactly one line ``Error: ...`` (``profile validate``: one
``INVALID`` line per file), no traceback, and the directory tree exactly as it was before the
command (no file created, changed or left behind). The corruptions of a file: truncated to half,
random bytes, empty, a directory in its place. Unwritable outputs: a chmod'ed directory, or, as
root (who ignores permission bits), a directory under ``/proc``, where no file can be created.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from hwprune.cli import cli

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------------------------- helpers
def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: max(1, len(data) // 2)])


def _random(p: Path) -> None:
    p.write_bytes(random.Random(p.name).randbytes(max(64, min(p.stat().st_size, 4096))))


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _directory(p: Path) -> None:
    p.unlink()
    p.mkdir()
    (p / "inner").write_text("x")


FAULTS: dict[str, Callable[[Path], None]] = {"truncated": _truncate, "random": _random, "empty": _empty,
                                             "directory": _directory}


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash (``<dir>`` for directories) of everything under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _invoke(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(cli, args)
    return r.exit_code, r.output


def _assert_rejected(args: list[str], root: Path, *, needle: str = "", lines_prefix: str = "Error:") -> str:
    """Run ``args``: exit 2, one line, no traceback, ``root`` unchanged. Returns the output."""
    before = _snapshot(root)
    code, out = _invoke(args)
    assert code == 2, f"{args}: exit code {code}\n{out}"
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(lines_prefix), f"{args}: not one line:\n{out}"
    assert "Traceback" not in out, out
    assert needle in out, f"{args}: {needle!r} not in {out!r}"
    assert _snapshot(root) == before, f"{args}: files changed or left behind"
    return out


@pytest.fixture()
def work(tmp_path: Path, tiny_finished_run: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of a finished run (conftest) under ``tmp_path/run``; the working directory is ``tmp_path``."""
    shutil.copytree(tiny_finished_run, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _sub(args: list[str], work: Path) -> list[str]:
    return [a.replace("{run}", str(work / "run")).replace("{tmp}", str(work)) for a in args]


# ----------------------------------------------------------------------------------------------- corrupt files
# (command, the files of the run it reads): every file x every corruption is one case.
RUN_READERS: dict[str, tuple[list[str], list[str]]] = {
    "prune": (["prune", "{run}"], ["config.yaml", "pruned.json", "pruned.safetensors", "prune_summary.json"]),
    "export": (["export", "{run}"], ["config.yaml", "example_input.safetensors", "dense.json", "dense.safetensors",
                                     "pruned.json", "pruned.safetensors"]),
    "export --out": (["export", "{run}", "--out", "{tmp}/x.onnx"], ["config.yaml", "example_input.safetensors",
                                                                     "pruned.json", "pruned.safetensors"]),
    "export --stage": (["export", "{run}", "--stage", "sparse"], ["sparse.json", "sparse.safetensors"]),
    "bundle": (["bundle", "{run}", "--out", "{tmp}/b"], ["model.onnx", "config.yaml", "surgery_plan.json",
                                                         "metrics.json", "example_input.safetensors"]),
    "nm": (["nm", "{run}"], ["config.yaml", "profile.yaml"]),
    "train --resume": (["train", "--out", "{run}", "--resume"], ["config.yaml", "checkpoints/dense/last.pt",
                                                                  "checkpoints/sparse/last.pt",
                                                                  "checkpoints/finetune/last.pt", "dense.json",
                                                                  "dense.safetensors"]),
    "run --resume": (["run", "--out", "{run}", "--resume"], ["config.yaml", "checkpoints/sparse/last.pt"]),
    "train --checkpoint": (["train", "--checkpoint", "{run}/dense", "--epochs", "1", "--out", "{tmp}/new"],
                           ["dense.json", "dense.safetensors"]),
}
CORRUPT_CASES = [(cmd, f, fault) for cmd, (_, files) in RUN_READERS.items() for f in files for fault in FAULTS]


@pytest.mark.parametrize(("cmd", "name", "fault"), CORRUPT_CASES, ids=[" ".join(c) for c in CORRUPT_CASES])
def test_a_corrupt_run_file_is_one_line_and_nothing_is_written(work: Path, cmd: str, name: str, fault: str) -> None:
    FAULTS[fault](work / "run" / name)
    out = _assert_rejected(_sub(RUN_READERS[cmd][0], work), work)
    assert "weights_only=False" not in out  # torch's unsafe advice never reaches the user


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("args", [["bench", "{f}"], ["bench", "--compare", "{run}/dense.onnx", "{f}"],
                                  ["train", "--config", "{f}", "--out", "{tmp}/t"], ["run", "--config", "{f}"],
                                  ["groups", "--profile", "{f}", "--model", "lenet5"],
                                  ["latency-table", "--profile", "{f}", "--model", "lenet5", "--out", "{tmp}/lt"],
                                  ["profile", "show", "{f}"], ["train", "--profile", "{f}", "--out", "{tmp}/t"]],
                         ids=lambda a: " ".join(a[:2]))
def test_a_corrupt_user_file_is_one_line(work: Path, args: list[str], fault: str) -> None:
    if fault == "empty" and "--config" in args:
        pytest.skip("an empty YAML file is a valid, empty configuration")
    kind = ".yaml" if ("--config" in args or "--profile" in args or "profile" in args) else ".onnx"
    f = work / f"user{kind}"
    shutil.copyfile(work / "run" / ("profile.yaml" if kind == ".yaml" else "model.onnx"), f)
    if "--config" in args:
        f.write_text("epochs: 2\nlr: [0.1\nmodel: x\n")  # malformed YAML before any fault
    FAULTS[fault](f)
    _assert_rejected([a.replace("{f}", str(f)) for a in _sub(args, work)], work)


def test_malformed_config_names_line_and_column(work: Path) -> None:
    (work / "c.yaml").write_text("epochs: 2\nlr: [0.1\nmodel: x\n")
    out = _assert_rejected(["train", "--config", str(work / "c.yaml"), "--out", str(work / "t")], work)
    assert "line 3, column" in out and "c.yaml" in out


def test_profile_validate_reports_each_corrupt_file_in_one_line(work: Path) -> None:
    f = work / "p.yaml"
    shutil.copyfile(work / "run" / "profile.yaml", f)
    _truncate(f)
    _assert_rejected(["profile", "validate", str(f)], work, lines_prefix="INVALID")


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("name", ["model.onnx", "manifest.json", "manifest.sha256", "parity_input.npy",
                                  "parity_output.npy"])
def test_a_corrupt_bundle_file_is_one_line(work: Path, name: str, fault: str) -> None:
    from hwprune.pipeline.bundle import MANIFEST, MANIFEST_HASH, sha256_file

    assert _invoke(["bundle", str(work / "run"), "--out", str(work / "b")])[0] == 0
    b = work / "b"
    FAULTS[fault](b / name)
    if name not in (MANIFEST, MANIFEST_HASH) and fault != "directory":  # re-hash: only the loaders can catch it
        import json

        m = json.loads((b / MANIFEST).read_text())
        m["files"][name] = sha256_file(b / name)
        (b / MANIFEST).write_text(json.dumps(m))
        (b / MANIFEST_HASH).write_text(f"{sha256_file(b / MANIFEST)}  {MANIFEST}\n")
    _assert_rejected(["bundle", "--verify", str(b)], work, needle=str(b))


def test_a_corrupt_image_in_a_folder_is_one_line(work: Path) -> None:
    pytest.importorskip("PIL")
    for cls in ("a", "b"):
        (work / "imgs" / cls).mkdir(parents=True)
        (work / "imgs" / cls / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _assert_rejected(["train", "--data", "imagefolder", "--data-dir", str(work / "imgs"), "--out",
                      str(work / "t")], work, needle="x.png")


# ----------------------------------------------------------------------------------------------- outputs
@pytest.fixture()
def unwritable(work: Path) -> Iterator[Path]:
    """A directory in which no file can be created (chmod 0555; as root a place under /proc)."""
    if IS_ROOT:
        if not Path("/proc").is_dir():
            pytest.skip("no /proc to stand for a read-only location as root")
        yield Path("/proc/hwprune-unwritable")
        return
    d = work / "ro"
    d.mkdir()
    d.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    yield d
    d.chmod(0o755)


OUT_COMMANDS: dict[str, list[str]] = {
    "run": ["run", "--epochs", "1", "--out", "{o}/r"],
    "train": ["train", "--epochs", "1", "--out", "{o}/t"],
    "export --model": ["export", "--model", "lenet5", "--out", "{o}/m.onnx"],
    "export RUN --out": ["export", "{run}", "--out", "{o}/m.onnx"],
    "bench --out": ["bench", "{run}/model.onnx", "--iters", "1", "--repeats", "1", "--out", "{o}/b.json"],
    "bundle": ["bundle", "{run}", "--out", "{o}/b"],
    "latency-table": ["latency-table", "--profile", "generic-channel", "--model", "lenet5", "--out", "{o}/lt"],
    "profile calibrate": ["profile", "calibrate", "--kinds", "linear", "--out", "{o}/p.yaml"],
}


@pytest.mark.parametrize("cmd", sorted(OUT_COMMANDS))
def test_an_unwritable_out_is_rejected_before_any_work(work: Path, unwritable: Path, cmd: str) -> None:
    args = [a.replace("{o}", str(unwritable)) for a in _sub(OUT_COMMANDS[cmd], work)]
    _assert_rejected(args, work, needle="cannot write")


@pytest.mark.parametrize("cmd", sorted(OUT_COMMANDS))
def test_an_out_below_a_file_is_rejected(work: Path, cmd: str) -> None:
    (work / "afile").write_text("keep me")
    args = [a.replace("{o}", str(work / "afile")) for a in _sub(OUT_COMMANDS[cmd], work)]
    _assert_rejected(args, work, needle="is a file, not a directory")


@pytest.mark.parametrize("cmd", sorted(OUT_COMMANDS))
def test_an_out_that_is_an_existing_file_is_rejected(work: Path, cmd: str) -> None:
    args = _sub(OUT_COMMANDS[cmd], work)
    i = args.index("--out") + 1
    Path(args[i]).parent.mkdir(parents=True, exist_ok=True)
    Path(args[i]).write_text("keep me")
    _assert_rejected(args, work)


@pytest.mark.parametrize("args", [["prune", "{run}"], ["export", "{run}"], ["nm", "{run}"]],
                         ids=lambda a: a[0])
def test_an_unwritable_run_directory_is_rejected_before_any_work(work: Path, args: list[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run = work / "run"
    (run / "prune_summary.json").unlink()  # prune then has surgery to do (its output goes into RUN_DIR)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == run else real_access(p, mode, **kw))
    _assert_rejected(_sub(args, work), work)


# ----------------------------------------------------------------------------------------------- options
BAD_OPTIONS: list[tuple[list[str], str]] = [
    (["run", "--latency-budget", "2x"], "fraction must be in (0, 1]"),
    (["run", "--latency-budget", "fast"], "--latency-budget"),
    (["run", "--sparsity", "1.2"], "[0, 1)"),
    (["run", "--sparsity", "0.3,0.5", "--latency-budget", "0.5x"], "cannot be combined"),
    (["train", "--model", "nope", "--out", "t"], "unknown model"),
    (["train", "--model", "nomodule:build", "--out", "t"], "cannot import module"),
    (["train", "--data", "nope", "--out", "t"], "unknown dataset"),
    (["train", "--data", "mnist", "--data-dir", "missing", "--out", "t"], "does not exist"),
    (["train", "--data", "imagefolder", "--out", "t"], "needs data_dir"),
    (["train", "--profile", "nope", "--out", "t"], "unknown profile"),
    (["train", "--method", "nope", "--out", "t"], "nope"),
    (["train", "--epochs", "0", "--out", "t"], "epochs"),
    (["train", "--lr", "-1", "--out", "t"], "lr"),
    (["train", "--momentum", "1.5", "--out", "t"], "momentum"),
    (["train", "--weight-decay", "-1", "--out", "t"], "weight_decay"),
    (["train", "--device", "gpu", "--out", "t"], "--device"),
    (["train", "--epochz", "3", "--out", "t"], "--epochs"),
    (["train"], "--out"),
    (["run", "--resume", "--sparsity", "0.3,0.5"], "--resume"),
    (["export", "--model", "nope", "--out", "x.onnx"], "unknown model"),
    (["export", "{run}", "--stage", "nope"], "valid stages"),
    (["groups", "--profile", "x86-avx2-ort", "--model", "nope"], "unknown model"),
    (["groups", "--profile", "x86-avx2-ort", "--model", "lenet5", "--data", "nope"], "unknown dataset"),
    (["latency-table", "--profile", "generic-channel", "--model", "lenet5", "--widths", "8,x"], "--widths"),
    (["select", "--measure", "nope"], "unknown model"),
    (["bench", "{run}/model.onnx", "--batch-size", "0"], "--batch-size"),
    (["bench", "{run}/model.onnx", "{run}/dense.onnx"], "one MODEL.onnx"),
    (["bundle", "{run}", "--out", "b", "--calib-samples", "0"], "--calib-samples"),
    (["bundle", "{run}"], "--out"),
    (["bundle", "--verify", "nowhere"], "not a bundle directory"),
    (["profile", "show", "nope"], "unknown profile"),
    (["profile", "calibrate", "--kinds", "bogus", "--out", "p.yaml"], "bogus"),
    (["nm", "{run}", "--epochs", "-1"], "--epochs"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_OPTIONS, ids=[" ".join(a[:3]) for a, _ in BAD_OPTIONS])
def test_an_invalid_option_is_rejected_and_nothing_is_written(work: Path, args: list[str], needle: str) -> None:
    _assert_rejected(_sub(args, work), work, needle=needle)


def test_a_config_key_of_no_option_is_named_with_a_suggestion(work: Path) -> None:
    (work / "c.yaml").write_text("bench_iterz: 3\n")
    _assert_rejected(["run", "--config", str(work / "c.yaml")], work, needle="did you mean 'bench_iters'")


# ----------------------------------------------------------------------------------------------- finished runs
@pytest.mark.parametrize("cmd", ["train", "run"])
def test_a_finished_run_is_not_overwritten_without_force(work: Path, cmd: str) -> None:
    _assert_rejected([cmd, "--epochs", "1", "--out", str(work / "run")], work, needle="--force")


def test_an_interrupted_run_is_not_restarted_without_resume_or_force(work: Path) -> None:
    (work / "run" / "metrics.json").unlink()
    _assert_rejected(["train", "--epochs", "1", "--out", str(work / "run")], work, needle="--resume")


def test_a_foreign_directory_is_not_written_into_without_force(work: Path) -> None:
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("precious")
    _assert_rejected(["train", "--out", str(work / "mine")], work, needle="not empty")


def test_resume_refuses_other_options(work: Path) -> None:
    _assert_rejected(["train", "--out", str(work / "run"), "--resume", "--lr", "0.5"], work, needle="lr 0.05 -> 0.5")


def test_the_suite_covers_every_command() -> None:
    import click

    from tests.test_cli import LEAVES

    used = [args for args, _ in RUN_READERS.values()] + list(OUT_COMMANDS.values()) + [a for a, _ in BAD_OPTIONS]
    used += [["profile", "validate"], ["profile", "show"], ["bundle", "--verify"], ["groups"], ["latency-table"]]
    covered = {tuple(a[:2]) if a[0] == "profile" else (a[0],) for a in used}
    no_input = {("profile", "list")}  # takes no file and no value that can be wrong
    assert set(LEAVES) - no_input <= covered, f"commands without fault cases: {set(LEAVES) - no_input - covered}"
    assert isinstance(cli, click.Group)
