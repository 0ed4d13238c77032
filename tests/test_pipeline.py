"""hwprune run / train / prune end to end on tiny digits runs (fast variants; full runs are slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from hwprune.base.errors import ConfigError
from hwprune.cli import cli
from hwprune.pipeline.steps import PipelineOptions, run, step_export, step_nm, step_prune, step_train
from hwprune.report.render import validate_report
from hwprune.training.config import TrainJobConfig
from hwprune.training.rundir import RunDir

FAST = TrainJobConfig(model="digits_cnn", model_kwargs={"width": 0.5}, data="digits", train_limit=400, epochs=1,
                      dense_epochs=1, finetune_epochs=1, batch_size=64, profile="x86-avx2-ort")
FAST_BENCH = PipelineOptions(bench_batch_sizes=(1, 8), bench_iters=5, bench_warmup=1, bench_repeats=1, nm_epochs=1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, run(FAST, run_dir, opts=FAST_BENCH, progress=False)


def test_run_writes_a_valid_report_with_plots(fast_run: tuple[Path, dict]) -> None:
    run_dir, report = fast_run
    validate_report(report)
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["accuracy"] == report["accuracy"]
    assert all(s["nonzero"] == s["k"] for s in report["scopes"])
    assert report["params"]["pruned"] < report["params"]["dense"]
    assert report["macs"]["pruned"] < report["macs"]["dense"]
    assert {s["batch"] for s in report["latency"]["pruned"]} == {1, 8}
    md = (run_dir / "report.md").read_text()
    assert f"{report['params']['pruned']}" in md and "x86-avx2-ort" in md
    for name in ("training.png", "widths.png", "pareto.png"):
        assert (run_dir / "plots" / name).read_bytes()[:8] == PNG_MAGIC
    for artifact in ("config.yaml", "profile.yaml", "example_input.safetensors", "train_log.jsonl", "groups.json",
                     "dense.json", "sparse.safetensors", "pruned.json", "surgery_plan.json", "prune_summary.json",
                     "model.onnx", "dense.onnx", "model.export.json", "dense.export.json", "bench.json",
                     "metrics.json"):
        assert (run_dir / artifact).is_file(), artifact
    widths = {w["module"]: w for w in report["widths"]}
    assert all(w["aligned"] for w in widths.values() if w["block"] > 1)
    # honest protocol: which model and split every accuracy belongs to
    assert report["accuracy_of"] == {"split": "test", "dense": "dense", "pruned": "pruned", "test_images": 360}
    assert report["splits"]["val"] == 40 and report["splits"]["train"] == 360  # 10 % of the 400 held out
    assert report["finetuned_model"] == "compact" and "validation split (40 images" in md
    log = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert all("val_acc" in r and "eval_acc" not in r for r in log)


def test_steps_rerun_alone_from_artifacts(fast_run: tuple[Path, dict]) -> None:
    run_dir, report = fast_run
    plan_before = (run_dir / "surgery_plan.json").read_bytes()
    summary = step_prune(run_dir)  # the train job did the surgery: prune is idempotent
    assert summary == RunDir.open(run_dir).surgery() and not summary.after_finetune
    assert (run_dir / "surgery_plan.json").read_bytes() == plan_before
    assert summary.params["pruned"] == report["params"]["pruned"] < summary.params["sparse"]
    assert summary.val_accuracy["pruned"] == pytest.approx(summary.val_accuracy["sparse"], abs=1e-9)
    exp = step_export(run_dir)
    assert exp.passed and RunDir.open(run_dir).export("dense").passed and exp.stage == "pruned"
    dense_record = (run_dir / "model.export.json").read_bytes()
    one = step_export(run_dir, stage="dense")  # one stage alone: its own file and record, nobody else's
    assert one.stage == "dense" and one.onnx == "dense.onnx"
    assert (run_dir / "model.export.json").read_bytes() == dense_record


def test_masked_finetune_leaves_the_surgery_to_prune(tmp_path: Path) -> None:
    res = step_train(FAST.replace(compact_finetune=False), tmp_path)
    rd = res.rundir
    assert res.metrics.final_stage == "sparse" and not rd.has_model("pruned") and not rd.has_surgery()
    summary = step_prune(tmp_path)  # surgery on the fine-tuned masked model, checked against groups.json
    assert summary.after_finetune and rd.has_surgery()
    assert summary.params["pruned"] < summary.params["sparse"] and summary.max_abs_diff < 1e-4
    assert step_prune(tmp_path) == summary  # a second call is idempotent


def test_mask_profiles_keep_exact_k_through_the_compact_finetune(tmp_path: Path) -> None:
    from hwprune.training.compact import surgery_groups

    res = step_train(FAST.replace(profile="cpu-ort-kernel-shape", train_limit=200), tmp_path)
    rd = res.rundir
    assert rd.surgery().params["pruned"] == rd.surgery().params["sparse"]  # masks: nothing to remove
    final, _ = rd.load_model("pruned")
    groups = surgery_groups(final, rd.profile, rd, what="final model")
    assert groups.nonzero_per_scope().tolist() == [s.k for s in res.metrics.scopes]  # zeros stayed zero


def test_resuming_a_finished_job_reproduces_it(tmp_path: Path) -> None:
    first = step_train(FAST, tmp_path)
    log_lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
    again = step_train(FAST, tmp_path, resume=True)  # each phase restores its last checkpoint; the surgery
    assert again.metrics.test_accuracy == first.metrics.test_accuracy  # rebuilds the compact model it fits
    assert again.metrics.scopes == first.metrics.scopes
    a, b = first.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert (tmp_path / "train_log.jsonl").read_text().splitlines() == log_lines  # nothing trained twice


def test_old_or_foreign_run_directories_fail_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": "digits_cnn", "profile": "generic-channel"}))
    r = CliRunner().invoke(cli, ["prune", str(tmp_path)])
    assert r.exit_code == 2 and "run_format" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"run_format": 99, "train": {}}))
    r = CliRunner().invoke(cli, ["export", str(tmp_path)])
    assert r.exit_code == 2 and "run_format 99" in r.output and "Traceback" not in r.output


def test_cli_prune_and_export_on_run_dir(fast_run: tuple[Path, dict]) -> None:
    run_dir, _ = fast_run
    r = CliRunner().invoke(cli, ["prune", str(run_dir), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["max_abs_diff"] < 1e-4
    r = CliRunner().invoke(cli, ["export", str(run_dir), "--opset", "18"])
    assert r.exit_code == 0, r.output
    record = RunDir.open(run_dir).export()  # the run's export record of model.onnx, re-exported with opset 18
    assert record.stage == "pruned" and record.report["opset"] == 18 and record.passed
    r = CliRunner().invoke(cli, ["export", str(run_dir), "--out", str(run_dir / "other.onnx")])
    assert r.exit_code == 2 and "omit --out" in r.output


def test_run_with_an_nm_profile_masks_and_checks_the_pattern(tmp_path: Path) -> None:
    cfg = FAST.replace(profile="nvidia-ampere-trt-fp16")
    report = run(cfg, tmp_path, opts=FAST_BENCH, progress=False)
    rd = RunDir.open(tmp_path)
    nm = rd.nm()
    assert nm is not None and nm.pattern == "2:4" and nm.max_nonzero_per_block <= 2 and nm.layers
    exp = rd.export()
    assert exp.stage == "nm" and exp.nm_pattern is not None and exp.nm_pattern["ok"] and exp.nm_pattern["tensors"]
    assert "tensorrt" in report["notes"].lower()  # timed on ORT CPU instead, and said so
    assert report["accuracy"]["pruned"] == nm.test_accuracy and report["accuracy_of"]["pruned"] == "nm"
    # config.yaml holds the N:M options run used; `hwprune nm RUN_DIR` repeats them, and records new ones
    assert rd.config.pipeline == FAST_BENCH
    r = CliRunner().invoke(cli, ["nm", str(tmp_path), "--epochs", "0"])
    assert r.exit_code == 0, r.output
    assert RunDir.open(tmp_path).config.pipeline.nm_epochs == 0
    again = step_nm(tmp_path)  # no options: the recorded ones (0 epochs: projection only)
    assert again is not None and again.max_nonzero_per_block <= 2


def test_train_cli_ends_with_exact_k(tmp_path: Path) -> None:
    out = tmp_path / "x"
    r = CliRunner().invoke(cli, ["train", "--model", "lenet5", "--data", "digits", "--sparsity", "0.5",
                                 "--epochs", "1", "--dense-epochs", "1", "--train-limit", "300",
                                 "--profile", "generic-channel", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)
    assert metrics["scopes"] and all(s["nonzero"] == s["k"] for s in metrics["scopes"])
    assert metrics["final_stage"] == "pruned" and metrics["splits"]["val"] == 30
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["run_format"] == 1 and saved["train"]["model"] == "lenet5" and saved["profile"] == "generic-channel"
    again = CliRunner().invoke(cli, ["train", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "y"),
                                     "--epochs", "1", "--json"])  # a run's config.yaml repeats its job
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["scopes"] == metrics["scopes"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--sparsity", "1.5"], "--sparsity"),
        (["run", "--method", "nope", "--out", "{tmp}"], "valid methods"),
        (["train", "--model", "nope", "--out", "{tmp}"], "nope"),
        (["train", "--epochs", "0", "--out", "{tmp}"], "epochs"),
        (["run", "--config", "{tmp}/missing.yaml"], "not found"),
        (["prune", "{tmp}"], "config.yaml"),
        (["train", "--val-fraction", "0.9", "--out", "{tmp}"], "val_fraction"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    r = CliRunner().invoke(cli, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_config_file_supplies_defaults_and_cli_overrides(tmp_path: Path) -> None:
    from hwprune.cli.jobopts import build_job_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: lenet5\nepochs: 7\nlr: 0.2\n")
    cfg = build_job_config({"config_file": cfg_file, "epochs": 3, "model": None})
    assert (cfg.model, cfg.epochs, cfg.lr) == ("lenet5", 3, 0.2)
    cfg_file.write_text("modle: lenet5\n")
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        build_job_config({"config_file": cfg_file})
    cfg_file.write_text("hs_frac: 0.5\n")
    with pytest.raises(ConfigError, match="method_options"):  # moved into the wgsef options
        build_job_config({"config_file": cfg_file})


@pytest.mark.slow
def test_sweep_draws_the_pareto_chart(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["run", "--sparsity", "0.3,0.6", "--epochs", "1", "--dense-epochs", "1",
                                 "--train-limit", "300", "--profile", "x86-avx2-ort", "--bench-iters", "5",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert [p["kind"] for p in sweep["points"]] == ["dense", "pruned", "pruned"]
    assert (tmp_path / "plots" / "pareto.png").read_bytes()[:8] == PNG_MAGIC


def test_openvino_calibrated_profile_through_export_bench_report(fast_run: tuple[Path, dict], tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    import shutil

    from hwprune.pipeline.steps import step_bench, step_report
    from hwprune.profiles import load_profile, profile_to_dict

    run_dir = tmp_path / "ov"
    shutil.copytree(fast_run[0], run_dir)
    prof = profile_to_dict(load_profile("x86-openvino"))
    prof["calibration"] = {"backend": "openvino", "provider": "cpu", "precision": "fp32", "threads": 1, "batch": 1,
                           "blocks": {"conv": 16, "linear": 8},
                           "machine": {"cpu_model": "any", "cores": 1, "arch": "x86_64"}}
    (run_dir / "profile.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    exp = step_export(run_dir)
    assert exp.openvino is not None
    assert exp.openvino["passed"] and exp.openvino["max_abs_diff"] <= exp.openvino["atol"]
    bench = step_bench(run_dir, FAST_BENCH)
    assert bench.spec["backend"] == "openvino" and bench.fallback_note is None
    report = step_report(run_dir)
    assert {s["backend"] for s in report["latency"]["pruned"]} == {"openvino"}
    assert report["export"]["openvino"]["passed"]
    sw = report["staircase_widths"]
    assert sw["blocks"] == {"conv": 16, "linear": 8} and sw["layers"]
    assert all(r["step_width"] >= r["after"] for r in sw["layers"])
    assert "## Kept widths vs the measured staircase" in (run_dir / "report.md").read_text()
