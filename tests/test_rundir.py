"""RunDir: one owner of a run's files; config.yaml of every step; typed records; format errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from hwprune.base.errors import ConfigError, DataError
from hwprune.groups import build_groups
from hwprune.profiles import load_profile
from hwprune.training.artifacts import ByStage, GroupCounts, ScopeCount, SplitSizes, TrainMetrics
from hwprune.training.config import TrainJobConfig
from hwprune.training.runconfig import RUN_FORMAT, PipelineOptions, RunConfig
from hwprune.training.rundir import EXAMPLE_N, RunDir
from tests.tiny_models import TINY_MODELS, example_input

PROFILE = load_profile("generic-channel")
JOB = TrainJobConfig(data="digits", train_limit=100, profile="generic-channel")


def _create(root: Path, fresh: bool = True, **pipeline: object) -> RunDir:
    cfg = RunConfig(train=JOB, profile=PROFILE.name, pipeline=PipelineOptions(**pipeline))  # type: ignore[arg-type]
    return RunDir.create(root, cfg, PROFILE, fresh=fresh)


def _metrics() -> TrainMetrics:
    return TrainMetrics(model="m", data="d", profile="p", method="wgsef", sparsity=0.5, final_stage="pruned",
                        test_accuracy=ByStage(dense=0.9, final=0.8), val_accuracy=ByStage(0.91, 0.5, 0.4, 0.85),
                        test_loss=ByStage(dense=0.3, final=0.4), scopes=[ScopeCount("a", 4, 2, 2)], exact_k=True,
                        groups=GroupCounts(4, 2, 2, 3, 1), lam=0.5, splits=SplitSizes(90, 10, 360, 0, 0.1),
                        epochs={"dense": 1}, seconds={"dense": 0.5}, method_info={"x": [1, 2]})


def test_config_yaml_records_every_step_and_reloads(tmp_path: Path) -> None:
    rd = _create(tmp_path, nm_epochs=3, bench_batch_sizes=(1, 4))
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["run_format"] == RUN_FORMAT and saved["profile"] == "generic-channel"
    assert saved["train"]["data_seed"] == 0 and saved["pipeline"]["nm_epochs"] == 3
    again = RunDir.open(tmp_path)
    assert again.config == rd.config and again.config.pipeline.bench_batch_sizes == (1, 4)
    again.record_pipeline(dataclasses.replace(again.config.pipeline, nm_lam=0.2))
    assert RunDir.open(tmp_path).config.pipeline.nm_lam == 0.2


def test_profile_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _create(tmp_path)
    import hwprune.training.rundir as mod

    calls = []
    real = mod.load_profile
    monkeypatch.setattr(mod, "load_profile", lambda p: calls.append(p) or real(p))
    rd = RunDir.open(tmp_path)
    assert rd.profile == rd.profile == PROFILE and len(calls) == 1


def test_records_round_trip_and_name_missing_keys(tmp_path: Path) -> None:
    rd = _create(tmp_path)
    rd.write_metrics(_metrics())
    assert RunDir.open(tmp_path).metrics() == _metrics()
    (tmp_path / "metrics.json").write_text('{"model": "m"}')
    with pytest.raises(DataError, match="missing key 'test_accuracy'"):
        rd.metrics()
    (tmp_path / "metrics.json").write_text("{broken")
    with pytest.raises(DataError, match="corrupt train metrics"):
        rd.metrics()
    assert rd.nm() is None and rd.bench() is None and rd.report() is None
    with pytest.raises(DataError, match="hwprune prune"):
        rd.surgery()


def test_one_example_input_and_stages(tmp_path: Path) -> None:
    rd = _create(tmp_path)
    images = torch.randn(20, 3, 16, 16)
    rd.write_example(images)
    again = RunDir.open(tmp_path)
    assert torch.equal(again.example_batch(), images[:EXAMPLE_N]) and again.example_input().shape == (1, 3, 16, 16)
    with pytest.raises(DataError, match="no saved model"):
        again.final_stage()
    for stage in ("dense", "sparse"):
        (tmp_path / f"{stage}.json").write_text("{}")
    assert again.final_stage() == "sparse"


def test_a_fresh_run_clears_the_old_runs_outputs_but_keeps_dense(tmp_path: Path) -> None:
    _create(tmp_path)
    for name in ("dense.json", "dense.safetensors", "pruned.json", "prune_summary.json", "model.onnx", "notes.txt"):
        (tmp_path / name).write_text("old")
    _create(tmp_path, fresh=False)
    assert (tmp_path / "pruned.json").exists()  # resume keeps everything
    _create(tmp_path, fresh=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".yaml") == \
        ["dense.json", "dense.safetensors", "notes.txt"]


def test_groups_json_guards_a_later_surgery(tmp_path: Path) -> None:
    rd = _create(tmp_path)
    model = TINY_MODELS["chain"](seed=0)
    gs = build_groups(model, PROFILE, example_input("chain"))
    rd.write_groups(gs)
    rd.check_groups(build_groups(TINY_MODELS["chain"](seed=1), PROFILE, example_input("chain")))  # same layout
    other = build_groups(TINY_MODELS["residual"](seed=0), PROFILE, example_input("residual"))
    with pytest.raises(DataError, match="differ from the trained ones"):
        rd.check_groups(other)


def test_other_run_formats_fail_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": "x"}))
    with pytest.raises(DataError, match="has no run_format") as info:
        RunDir.open(tmp_path)
    assert "\n" not in str(info.value)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"run_format": RUN_FORMAT, "train": {"modle": "x"}}))
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        RunDir.open(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        RunDir.open(tmp_path / "nope")


def test_main_process_decides_before_the_process_group(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hwprune.training.distributed import is_main_process

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    _create(tmp_path / "r")  # rank 1 writes nothing
    assert not (tmp_path / "r" / "config.yaml").exists()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
