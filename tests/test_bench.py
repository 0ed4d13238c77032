"""Timing in a fresh subprocess, statistics, CLI errors, environment info, and the TensorRT runner on a fake."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hwprune.base.errors import ConfigError, DataError, MissingBackendError
from hwprune.cli import cli
from hwprune.profiles import BenchSpec
from hwprune.runtime import bench
from hwprune.runtime import trt as _trt
from hwprune.runtime.bench import BenchWorkerError, LatencyStats, compare, measure, summarize
from hwprune.runtime.envinfo import _cpuinfo, collect_env
from hwprune.runtime.export import ExportConfig, to_onnx
from tests import fake_tensorrt

FAST = BenchSpec(batch_sizes=(1, 2), warmup=2, iters=20, repeats=2, threads=1)


def _net(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 10))


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("bench")
    x = torch.randn(1, 3, 8, 8)
    return to_onnx(_net(16), x, d / "dense.onnx"), to_onnx(_net(4), x, d / "pruned.onnx")


def _ordered(s: LatencyStats) -> bool:
    vals = [s.min_ms, s.median_ms, s.p90_ms, s.p99_ms]
    return all(math.isfinite(v) and v > 0 for v in vals) and vals == sorted(vals)


def test_measure_finite_ordered_percentiles(onnx_pair: tuple[Path, Path]) -> None:
    stats = measure(onnx_pair[0], FAST)
    assert [s.batch for s in stats] == [1, 2]
    for s in stats:
        assert _ordered(s) and s.iters == 20 and s.repeats == 2 and s.threads == 1
        assert len(s.extra["round_medians_ms"]) == 2
        assert s.throughput_per_s == pytest.approx(s.batch * 1000.0 / s.median_ms)
        assert LatencyStats.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert [s.batch for s in measure(onnx_pair[0], FAST, batch_size=3)] == [3]


def test_summarize_is_median_over_rounds_and_ordered() -> None:
    meta = dict(backend="x", provider="cpu", precision="fp32", threads=0, warmup=0, iters=5, repeats=3)
    s = summarize([[1, 2, 3, 4, 100], [2, 2, 2, 2, 2], [5, 6, 7, 8, 9]], batch=4, meta=meta)
    assert s.median_ms == 3.0 and s.min_ms == 1.0 and s.extra["round_medians_ms"] == [3.0, 2.0, 7.0]
    assert _ordered(s) and s.throughput_per_s == pytest.approx(4000.0 / 3.0)
    with pytest.raises(ConfigError, match="unknown LatencyStats keys"):
        LatencyStats.from_dict({**s.to_dict(), "bogus": 1})


def test_compare_interleaved_speedup(onnx_pair: tuple[Path, Path]) -> None:
    res = compare(*onnx_pair, BenchSpec(batch_sizes=(2,), warmup=2, iters=20, repeats=1, threads=1))
    (row,) = res["speedup"]
    assert row["batch"] == 2 and row["speedup"] == pytest.approx(row["dense_median_ms"] / row["pruned_median_ms"])
    assert res["dense"][0]["median_ms"] == row["dense_median_ms"]


def test_a_bad_model_file_is_one_line_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(DataError, match=r"garbage.onnx: not a valid ONNX model") as err:
        measure(bad, FAST)  # checked before the worker starts: no flattened worker traceback
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    with pytest.raises(DataError, match="missing.onnx: missing ONNX model"):
        measure(tmp_path / "missing.onnx", FAST)


def test_worker_failure_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = to_onnx(_net(4), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the worker imports a broken onnxruntime from here
    (tmp_path / "onnxruntime.py").write_text("raise RuntimeError('broken native library')\n")
    with pytest.raises(BenchWorkerError, match=r"exit code 1\); stderr tail: .*broken native library") as err:
        measure(path, FAST)
    assert "\n" not in str(err.value)


def test_worker_reraises_typed_errors(tmp_path: Path) -> None:
    path = to_onnx(_net(4), torch.randn(1, 3, 8, 8), tmp_path / "static.onnx", ExportConfig(dynamic_batch=False))
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        measure(path, FAST, batch_size=2)
    with pytest.raises(ConfigError, match="precision 'fp16'"):
        measure(path, BenchSpec(precision="fp16", batch_sizes=(1,), iters=1, repeats=1))


def test_bench_module_is_lean() -> None:
    code = ("import sys, hwprune.runtime.bench, hwprune.runtime.worker; "
            "print(sorted({'torch', 'onnxruntime', 'tensorrt'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_cli_tensorrt_missing_is_exit_2(onnx_pair: tuple[Path, Path]) -> None:
    res = CliRunner().invoke(cli, ["bench", str(onnx_pair[0]), "--backend", "tensorrt"])
    assert res.exit_code == 2 and "hwprune[trt]" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA EP present")
def test_cli_cuda_provider_missing_is_exit_2(onnx_pair: tuple[Path, Path]) -> None:
    res = CliRunner().invoke(cli, ["bench", str(onnx_pair[0]), "--provider", "cuda", "--iters", "1"])
    assert res.exit_code == 2 and "hwprune[onnx-gpu]" in res.output
    with pytest.raises(MissingBackendError):
        measure(onnx_pair[0], BenchSpec(provider="cuda", batch_sizes=(1,), iters=1, repeats=1))


def test_cli_bench_json_and_compare(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    args = ["--batch-size", "1", "--iters", "10", "--warmup", "1", "--repeats", "1", "--threads", "1"]
    res = CliRunner().invoke(cli, ["bench", str(onnx_pair[0]), *args, "--json", "--out", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["results"][0]["batch"] == 1 and out["spec"]["iters"] == 10 and "cpu_model" in out["env"]
    assert json.loads((tmp_path / "b.json").read_text()) == out
    res = CliRunner().invoke(cli, ["bench", "--compare", *map(str, onnx_pair), *args])
    assert res.exit_code == 0 and "speed-up at batch 1:" in res.output, res.output
    res = CliRunner().invoke(cli, ["bench", "--compare", str(onnx_pair[0])])
    assert res.exit_code == 2 and "DENSE.onnx PRUNED.onnx" in res.output


def test_collect_env_keys() -> None:
    env = collect_env(include_gpu=False)
    assert {"python", "platform", "cpu_model", "isa", "physical_cores", "logical_cores", "versions", "gpu"} <= set(env)
    assert env["versions"]["torch"].startswith(torch.__version__.split("+")[0]) and env["versions"]["onnx"]
    assert set(env["versions"]) >= {"onnxruntime", "torch_pruning", "tensorrt"}
    assert env["logical_cores"] >= 1 and json.loads(json.dumps(env)) == env
    text = "processor: 0\nmodel name: Fake CPU\nflags: fpu avx avx2 fma\nphysical id: 0\ncore id: 0\n\n" \
           "processor: 1\nmodel name: Fake CPU\nflags: fpu avx avx2 fma\nphysical id: 0\ncore id: 0\n"
    assert _cpuinfo(text) == {"cpu_model": "Fake CPU", "isa": ["avx", "avx2", "fma"], "physical_cores": 1}


# --------------------------------------------------------------------------- TensorRT runner against the fake


def _build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, precision: str = "fp32", sparse: bool = False,
           **fake_kw: object) -> tuple[object, bytes, _trt.BuildInfo, Path]:
    trt = fake_tensorrt.make_module(**fake_kw)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"onnx-bytes")
    engine, info = _trt.build_engine(onnx_file, precision, sparse=sparse, batch_sizes=(4, 1, 8), input_name="input",
                                     input_shape=(3, 32, 32), workspace_mb=256, engine_path=tmp_path / "e.plan",
                                     log_path=tmp_path / "build.log",
                                     int8_calibrator="CAL" if precision == "int8" else None)
    return trt, engine, info, tmp_path / "e.plan"


def test_fake_trt_builder_calls_profile_and_engine_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    trt, engine, info, plan = _build(monkeypatch, tmp_path)
    names = [c[0] for c in trt.calls]
    order = ["Builder", "builder.create_network", "OnnxParser", "parser.parse", "builder.create_builder_config",
             "config.set_memory_pool_limit", "builder.create_optimization_profile", "profile.set_shape",
             "config.add_optimization_profile", "builder.build_serialized_network"]
    assert [n for n in names if n in order] == order
    assert dict(trt.calls)["builder.create_network"] == (1,)  # 1 << EXPLICIT_BATCH(0)
    assert dict(trt.calls)["parser.parse"] == (len(b"onnx-bytes"),)
    assert dict(trt.calls)["config.set_memory_pool_limit"] == (trt.MemoryPoolType.WORKSPACE, 256 << 20)
    assert dict(trt.calls)["profile.set_shape"] == ("input", (1, 3, 32, 32), (8, 3, 32, 32), (8, 3, 32, 32))
    assert trt.last_builder.config.flags == set()  # fp32, not sparse
    assert engine == b"FAKE-ENGINE-BYTES" and plan.read_bytes() == engine and info.engine_bytes == len(engine)
    assert info.min_shape == [1, 3, 32, 32] and info.max_shape == [8, 3, 32, 32] and info.sparse is False


@pytest.mark.parametrize(("precision", "sparse", "flags"), [
    ("fp32", True, {"SPARSE_WEIGHTS"}), ("fp16", False, {"FP16"}), ("fp16", True, {"FP16", "SPARSE_WEIGHTS"}),
    ("int8", False, {"INT8"}), ("int8", True, {"INT8", "SPARSE_WEIGHTS"})])
def test_fake_trt_precision_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, precision: str, sparse: bool,
                                  flags: set[str]) -> None:
    trt, _, info, _ = _build(monkeypatch, tmp_path, precision, sparse)
    config = trt.last_builder.config
    assert {f.name for f in config.flags} == flags
    assert config.int8_calibrator == ("CAL" if precision == "int8" else None)
    assert info.precision == precision and info.sparse is sparse


def test_fake_trt_int8_without_calibrator_warns_and_no_explicit_batch_flag(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    trt = fake_tensorrt.make_module(explicit_batch_flag=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    (tmp_path / "m.onnx").write_bytes(b"x")
    _, info = _trt.build_engine(tmp_path / "m.onnx", "int8", sparse=False, batch_sizes=(2,), input_name="in",
                                input_shape=(4,))
    assert dict(trt.calls)["builder.create_network"] == (0,)  # TensorRT >= 10: explicit batch is implicit
    assert any("calibrator" in w for w in info.warnings) and trt.last_builder.config.int8_calibrator is None
    with pytest.raises(ConfigError, match="valid: fp32, fp16, int8"):
        _trt.build_engine(tmp_path / "m.onnx", "bf8", sparse=False, batch_sizes=(2,), input_name="in", input_shape=(4,))


def test_fake_trt_sparsity_log_parsed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, _, info, _ = _build(monkeypatch, tmp_path, "fp16", True, log_messages=fake_tensorrt.SPARSITY_LOG)
    assert info.eligible_sparse_layers == ["/conv1/Conv", "/conv2/Conv", "/fc/Gemm"]
    assert info.picked_sparse_layers == ["/conv2/Conv"]
    assert "picked sparse implementation" in (tmp_path / "build.log").read_text()
    assert _trt.parse_sparsity_log(["(Sparsity) Layers eligible for sparse math: "]) == ([], [])


def test_fake_trt_parse_and_build_failures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(_trt.EngineBuildError, match="could not parse .*1 error.*unsupported op Foo"):
        _build(monkeypatch, tmp_path, parse_ok=False)
    with pytest.raises(_trt.EngineBuildError, match="build failed.*no tactic"):
        _build(monkeypatch, tmp_path, engine=None)
    assert not (tmp_path / "e.plan").exists()


def test_trt_backend_wiring_with_fake(monkeypatch: pytest.MonkeyPatch, onnx_pair: tuple[Path, Path]) -> None:
    trt = fake_tensorrt.make_module()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    timed: list[tuple[int, ...]] = []
    monkeypatch.setattr(_trt, "time_engine", lambda e, n, shape, warmup, iters: timed.append(shape) or [1.0, 2.0])
    req = dict(paths=[str(onnx_pair[0])], backend="tensorrt", provider="cuda", precision="fp16", batch_sizes=[1, 4],
               warmup=1, iters=2, repeats=2, threads=0, input_shape=None, trt_sparse=True)
    (stats,) = bench.run_request(req)
    assert timed == [(1, 3, 8, 8)] * 2 + [(4, 3, 8, 8)] * 2
    assert [s["batch"] for s in stats] == [1, 4] and stats[1]["median_ms"] == 1.5
    assert stats[1]["extra"]["build"]["max_shape"] == [4, 3, 8, 8] and stats[1]["extra"]["build"]["sparse"]


@pytest.mark.trt
@pytest.mark.gpu
def test_real_tensorrt_engine(onnx_pair: tuple[Path, Path]) -> None:
    stats = measure(onnx_pair[0], BenchSpec(backend="tensorrt", provider="cuda", precision="fp16", batch_sizes=(1,),
                                            warmup=5, iters=20, repeats=1))
    assert _ordered(stats[0]) and stats[0].extra["build"]["engine_bytes"] > 0


def test_a_profile_whose_backend_is_missing_falls_back_loudly(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the profile's own backend is used")
    args = ["bench", str(onnx_pair[0]), "--profile", "nvidia-ampere-trt-fp16", "--batch-size", "1", "--iters", "2",
            "--warmup", "0", "--repeats", "1"]
    res = CliRunner().invoke(cli, args)  # no --backend/--provider/--precision needed
    assert res.exit_code == 0, res.output
    assert "WARNING" in res.output and "TIMED ON onnxruntime/cpu/fp32 INSTEAD" in res.output
    out = json.loads(CliRunner().invoke(cli, [*args, "--json"]).stdout)
    assert out["spec"]["backend"] == "onnxruntime" and "tensorrt" in out["fallback_note"]
    res = CliRunner().invoke(cli, [*args, "--backend", "tensorrt"])  # asked for explicitly: no fallback
    assert res.exit_code == 2 and "tensorrt" in res.output and len(res.output.strip().splitlines()) == 1
    (tmp_path / "b.json").write_text("{}")
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b.json")])
    assert res.exit_code == 2 and "--force" in res.output and (tmp_path / "b.json").read_text() == "{}"
