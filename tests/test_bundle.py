"""Deployment bundle: build from a synthetic run dir, verify, detect tampering, int8 path."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hwprune.base.errors import ConfigError, DataError, NumericalMismatchError
from hwprune.base.files import dir_mode
from hwprune.pipeline.bundle import MANIFEST, MANIFEST_HASH, PARITY_IN, make_bundle, sha256_file, verify_bundle
from hwprune.profiles import BenchSpec, load_profile
from hwprune.training.artifacts import ByStage, GroupCounts, SplitSizes, SurgerySummary, TrainMetrics
from hwprune.training.config import TrainJobConfig
from hwprune.training.runconfig import RunConfig
from hwprune.training.rundir import RunDir

SIZE = 8  # synthetic images 3 x 8 x 8


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()
    rd = tmp_path / "run"
    job = TrainJobConfig(model="tiny", data="synthetic", image_size=SIZE, profile="generic-channel")
    run = RunDir.create(rd, RunConfig(train=job, profile="generic-channel"), load_profile("generic-channel"),
                        fresh=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), str(run.onnx_path("final")), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    run.write_metrics(_metrics(run))
    run.write_surgery({"version": 1, "steps": [], "widths": []},
                      SurgerySummary(params={"sparse": 1, "pruned": 1}, macs={"sparse": 1, "pruned": 1},
                                     val_accuracy={"sparse": None, "pruned": None}, removed_channels=0,
                                     max_abs_diff=0.0, after_finetune=False))
    return rd


def _metrics(run: RunDir) -> TrainMetrics:
    data = run.data()
    return TrainMetrics(model="tiny", data="synthetic", profile="generic-channel", method="wgsef", sparsity=0.5,
                        final_stage="pruned", test_accuracy=ByStage(dense=0.5, final=0.4375), val_accuracy=ByStage(),
                        test_loss=ByStage(), scopes=[], exact_k=True,
                        groups=GroupCounts(total=0, nonzero=0, k=0, nonzero_before_projection=0,
                                           zeroed_by_projection=0),
                        lam=0.5, splits=SplitSizes(**data.split_sizes, data_seed=0, val_fraction=0.1),
                        epochs={}, seconds={}, preprocessing=data.preprocessing)


def test_bundle_build_and_verify(run_dir: Path, tmp_path: Path) -> None:
    out = make_bundle(run_dir, tmp_path / "b")
    names = {p.name for p in out.iterdir()}
    assert names == {"model.onnx", "surgery_plan.json", "manifest.json", "manifest.sha256", "README.md",
                     "parity_input.npy", "parity_output.npy"}
    m = json.loads((out / MANIFEST).read_text())
    assert m["profile"] == "generic-channel" and m["accuracy"] == {"dense": 0.5, "pruned": 0.4375}
    assert m["inputs"][0]["name"] == "input" and m["inputs"][0]["shape"][1:] == [3, SIZE, SIZE]
    assert m["preprocessing"]["layout"] == "NCHW" and len(m["preprocessing"]["mean"]) == 3
    assert m["files"]["model.onnx"] == sha256_file(run_dir / "model.onnx")
    assert set(m["files"]) == names - {"manifest.json", "manifest.sha256"}
    assert (out / "manifest.sha256").read_text() == f"{sha256_file(out / MANIFEST)}  manifest.json\n"
    assert oct(out.stat().st_mode & 0o777) == oct(dir_mode())  # the normal mode, not mkdtemp's 0700
    assert "ort.InferenceSession" in (out / "README.md").read_text()
    rep = verify_bundle(out)
    assert rep.passed and rep.files_checked == 5 and rep.max_abs_diff <= rep.atol
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]  # no temp dirs left
    with pytest.raises(ConfigError, match="not empty"):
        make_bundle(run_dir, out)
    assert make_bundle(run_dir, out, overwrite=True) == out and verify_bundle(out).passed


def test_tampering_is_detected_and_named(run_dir: Path, tmp_path: Path) -> None:
    out = make_bundle(run_dir, tmp_path / "b")
    data = bytearray((out / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / "model.onnx").write_bytes(bytes(data))
    (out / "surgery_plan.json").unlink()
    (out / "extra.txt").write_text("x")
    with pytest.raises(DataError) as exc:
        verify_bundle(out)
    msg = str(exc.value)
    assert "hash mismatch model.onnx" in msg and "missing surgery_plan.json" in msg and "extra extra.txt" in msg

    from hwprune.cli import cli

    res = CliRunner().invoke(cli, ["bundle", "--verify", str(out)])
    assert res.exit_code == 2 and "hash mismatch model.onnx" in res.output


def test_parity_mismatch_is_numerical_error(run_dir: Path, tmp_path: Path) -> None:
    out = make_bundle(run_dir, tmp_path / "b")
    x = np.load(out / PARITY_IN) + 1.0  # different input, re-hashed so only parity can catch it
    np.save(out / PARITY_IN, x)
    m = json.loads((out / MANIFEST).read_text())
    m["files"][PARITY_IN] = sha256_file(out / PARITY_IN)
    (out / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DataError, match="hash mismatch manifest.json"):  # the manifest itself is covered
        verify_bundle(out)
    (out / MANIFEST_HASH).write_text(f"{sha256_file(out / MANIFEST)}  manifest.json\n")
    with pytest.raises(NumericalMismatchError, match="parity"):
        verify_bundle(out)


def test_an_edited_manifest_is_detected(run_dir: Path, tmp_path: Path) -> None:
    out = make_bundle(run_dir, tmp_path / "b")
    m = json.loads((out / MANIFEST).read_text())
    m["preprocessing"]["mean"] = [0.0, 0.0, 0.0]  # every listed file still matches its hash
    (out / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DataError, match="hash mismatch manifest.json"):
        verify_bundle(out)
    (out / MANIFEST_HASH).unlink()
    with pytest.raises(DataError, match="manifest.sha256: missing manifest hash"):
        verify_bundle(out)


def test_missing_model_and_cli_usage(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="model.onnx"):
        make_bundle(tmp_path, tmp_path / "b")
    from hwprune.cli import cli

    res = CliRunner().invoke(cli, ["bundle", str(tmp_path)])
    assert res.exit_code == 2 and "--out" in res.output


def test_int8_bundle(run_dir: Path, tmp_path: Path) -> None:
    spec = BenchSpec(batch_sizes=(1,), warmup=1, iters=3, repeats=1)
    out = make_bundle(run_dir, tmp_path / "q", int8=True, calib_samples=32, bench_spec=spec)
    m = json.loads((out / MANIFEST).read_text())
    q = m["int8"]
    assert (out / "model.int8.onnx").is_file() and "model.int8.onnx" in m["files"]
    assert q["calibration"]["samples"] == 32 and q["accuracy"]["test_samples"] == 128
    assert 0.0 <= q["accuracy"]["onnx_int8"] <= 1.0
    assert abs(q["accuracy"]["onnx_int8"] - q["accuracy"]["onnx_fp32"]) <= 0.25  # int8 stays close to fp32
    assert q["latency"]["int8"][0]["batch"] == 1 and q["latency"]["speedup"][0]["speedup"] > 0
    assert q["latency"]["int8"][0]["precision"] == "int8" and q["latency"]["fp32"][0]["precision"] == "fp32"
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    rep = verify_bundle(out)
    assert rep.passed and rep.int8_max_abs_diff is not None and rep.int8_max_abs_diff <= rep.int8_tolerance
    ref = np.load(out / "parity_output_int8.npy")
    np.save(out / "parity_output_int8.npy", ref + 10 * rep.int8_tolerance)  # a wrong int8 reference, re-hashed
    m["files"]["parity_output_int8.npy"] = sha256_file(out / "parity_output_int8.npy")
    (out / MANIFEST).write_text(json.dumps(m))
    (out / MANIFEST_HASH).write_text(f"{sha256_file(out / MANIFEST)}  manifest.json\n")
    with pytest.raises(NumericalMismatchError, match="int8 parity"):
        verify_bundle(out)


def test_the_readme_snippet_is_right_on_real_data(tiny_finished_run: Path, tmp_path: Path) -> None:
    """The bundle README's Python snippet, run as written on raw digits, reproduces the run's test accuracy."""
    import re
    import subprocess
    import sys

    out = make_bundle(tiny_finished_run, tmp_path / "b")
    rd = RunDir.open(tiny_finished_run)
    x, y = rd.data().test.tensors
    pre = rd.metrics().preprocessing
    mean, std = (torch.tensor(pre[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    raw = ((x * std + mean) * pre["scale"]).numpy()  # back to raw pixels (0..16 for digits)
    assert raw.max() > 8.0  # really raw: the snippet must scale them
    np.save(out / "images.npy", raw.astype(np.float32))
    (code,) = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), flags=re.DOTALL)
    r = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    pred = np.array([int(v) for v in re.findall(r"\d+", r.stdout)])
    accuracy = float((pred == y.numpy()).mean())
    assert len(pred) == len(y) and accuracy == pytest.approx(rd.metrics().test_accuracy.final, abs=1.5 / len(y))
