"""What a user sees and can set: per-epoch lines off a terminal, options, --config, --resume after Ctrl-C, paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hwprune.cli import cli

TINY = ["--model", "digits_cnn", "--data", "digits", "--train-limit", "120", "--epochs", "2", "--dense-epochs", "1",
        "--finetune-epochs", "1", "--profile", "x86-avx2-ort"]


def test_train_prints_one_line_per_epoch_when_not_on_a_terminal(tmp_path: Path) -> None:
    out = tmp_path / "t"
    r = CliRunner().invoke(cli, ["train", *TINY, "--momentum", "0.5", "--weight-decay", "0", "--finetune-lr", "0.01",
                                 "--dense-lr", "0.1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    epochs = [ln for ln in lines if " epoch " in ln]
    assert [ln.split()[0] for ln in epochs] == ["dense", "sparse", "sparse", "finetune"]
    assert all("loss" in ln and "val_acc" in ln for ln in epochs)
    sparse = [ln for ln in epochs if ln.startswith("sparse")]
    assert "nonzero groups 20 / k 10" in sparse[0] and "nonzero groups 10 / k 10" in sparse[-1]  # the prox chose
    assert any(ln.startswith("groups: 10 of 20 groups removed") for ln in lines)  # who chose them
    assert any("after the projection (before the fine-tune)" in ln for ln in lines)
    train = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert (train["momentum"], train["weight_decay"], train["finetune_lr"], train["dense_lr"]) == (0.5, 0.0, 0.01, 0.1)
    args = ["export", "--model", "mlp", "--in-channels", "1", "--input-size", "4", "--out"]
    loud = CliRunner().invoke(cli, [*args, str(tmp_path / "a.onnx")])
    quiet = CliRunner().invoke(cli, ["-q", *args, str(tmp_path / "b.onnx")])
    assert loud.exit_code == quiet.exit_code == 0
    assert "exporting model mlp" in loud.output and "exporting" not in quiet.output  # -q: no progress lines


def test_config_accepts_every_option_of_the_command(tmp_path: Path) -> None:
    from hwprune.cli.jobopts import config_option

    cfg = tmp_path / "c.yaml"
    out = tmp_path / "from-config"
    cfg.write_text(yaml.safe_dump({"model": "digits_cnn", "data": "digits", "train_limit": 200, "epochs": 1,
                                   "dense_epochs": 1, "finetune_epochs": 1, "profile": "x86-avx2-ort",
                                   "out": str(out), "sparsity": 0.25, "json": True,
                                   "model_kwargs": {"width": 0.5}, "method_options": {"hs_frac": 0.5}}))
    r = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--epochs", "2"])  # the command line wins
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)  # json: true from the file
    assert metrics["sparsity"] == 0.25 and metrics["epochs"]["sparse"] == 2
    assert metrics["method_options"]["hs_frac"] == 0.5
    recorded = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert recorded["model_kwargs"] == {"width": 0.5}
    assert config_option  # the same decorator is on train and run
    (tmp_path / "run.yaml").write_text("bench_iters: 0\n")  # a run option, checked as the option is
    r = CliRunner().invoke(cli, ["run", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--bench-iters" in r.output and len(r.output.strip().splitlines()) == 1


def test_resume_after_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hwprune.training.loop as loop

    real = loop.train_one_epoch
    calls = {"n": 0}

    def interrupted(*args: object, **kwargs: object) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:  # during the sparse phase's second epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    out = tmp_path / "t"
    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    r = CliRunner().invoke(cli, ["train", *TINY, "--out", str(out)])
    assert r.exit_code == 130 and "--resume" in r.output and "Traceback" not in r.output
    assert (out / "checkpoints" / "sparse" / "last.pt").is_file() and not (out / "metrics.json").exists()
    again = CliRunner().invoke(cli, ["train", *TINY, "--out", str(out)])
    assert again.exit_code == 2 and "interrupted run" in again.output  # neither restarted nor continued silently
    monkeypatch.setattr(loop, "train_one_epoch", real)
    done = CliRunner().invoke(cli, ["train", "--out", str(out), "--resume"])  # the recorded options
    assert done.exit_code == 0, done.output
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in log] == [("dense", 0), ("sparse", 0), ("sparse", 1), ("finetune", 0)]
    finished = CliRunner().invoke(cli, ["train", *TINY, "--out", str(out)])
    assert finished.exit_code == 2 and "--force" in finished.output


def test_image_folder_with_train_val_splits_and_portable_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = pytest.importorskip("PIL.Image")
    import numpy as np

    rng = np.random.default_rng(0)
    counts = {"train": 12, "val": 5}
    for split, n in counts.items():
        for c, cls in enumerate(("circle", "square")):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((10, 10)) * 60 + 150 * c).astype(np.uint8)
                image.fromarray(pixels, mode="L").save(d / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["train", "--model", "mlp", "--data", "imagefolder", "--data-dir", "imgs",
                                 "--image-size", "8", "--epochs", "1", "--dense-epochs", "1", "--profile",
                                 "generic-channel", "--out", "runs/img", "--json"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)
    assert metrics["splits"]["test"] == 2 * counts["val"]  # val/ is the test split
    assert metrics["splits"]["train"] + metrics["splits"]["val"] == 2 * counts["train"]
    train = yaml.safe_load((tmp_path / "runs" / "img" / "config.yaml").read_text())["train"]
    assert train["data_dir"] == str(tmp_path / "imgs")  # absolute: the run works from anywhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from hwprune.training.rundir import RunDir

    assert RunDir.open(tmp_path / "runs" / "img").data().split_sizes["test"] == 2 * counts["val"]


def test_input_shape_comes_from_the_data_or_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hwprune.cli.modelopts import resolve_input

    assert resolve_input("lenet5", data="digits") == {"num_classes": 10, "in_channels": 1, "input_size": 8}
    (tmp_path / "mine.py").write_text("from torch import nn\n\n\ndef build(num_classes=3, in_channels=1, "
                                      "input_size=12):\n    return nn.Sequential(nn.Flatten(), nn.Linear("
                                      "in_channels * input_size * input_size, 16), nn.ReLU(), nn.Linear(16, "
                                      "num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_input("mine:build") == {"num_classes": 3, "in_channels": 1, "input_size": 12}
    assert resolve_input("mine:build", input_size=6)["input_size"] == 6  # an explicit option wins
    r = CliRunner().invoke(cli, ["groups", "--profile", "generic-channel", "--model", "mine:build", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["num_groups"] == 16
