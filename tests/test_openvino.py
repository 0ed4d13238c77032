"""OpenVINO backend (timing, parity against PyTorch, CLI, profile, measured selection) and its helpers.

Also the one availability check and the one random-feeds helper. OpenVINO tests skip cleanly when the
extra is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hwprune.base.errors import ConfigError, MissingBackendError, NumericalMismatchError
from hwprune.cli import cli
from hwprune.profiles import BenchSpec, load_profile
from hwprune.runtime import availability
from hwprune.runtime.availability import backend_problem, require_backend
from hwprune.runtime.export import to_onnx
from hwprune.runtime.feeds import InputSpec, random_feeds

HAS_OV = availability.installed("openvino")
needs_ov = pytest.mark.skipif(not HAS_OV, reason="openvino not installed (pip install 'hwprune[openvino]')")
FAST = BenchSpec(backend="openvino", batch_sizes=(1, 2), warmup=1, iters=10, repeats=2, threads=1)


def _net(width: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 10)).eval()


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ov")
    x = torch.randn(1, 3, 8, 8)
    return to_onnx(_net(16), x, d / "dense.onnx"), to_onnx(_net(4), x, d / "pruned.onnx")


# ----------------------------------------------------------------------------- availability and feeds
def test_availability_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(availability, "installed", lambda m: m not in ("openvino", "tensorrt"))
    assert "hwprune[openvino]" in (backend_problem("openvino") or "")
    assert "hwprune[trt]" in (backend_problem("tensorrt", "cuda") or "")
    with pytest.raises(MissingBackendError, match=r"hwprune\[openvino\]"):
        require_backend("openvino")
    with pytest.raises(ConfigError, match="valid: onnxruntime, openvino, tensorrt"):
        backend_problem("tvm")
    with pytest.raises(ConfigError, match="has no provider 'cuda'"):
        backend_problem("openvino", "cuda")
    assert backend_problem("onnxruntime") is None


def test_random_feeds_shapes_types_and_errors() -> None:
    specs = [InputSpec("x", (None, 3, 4), "tensor(float)"), InputSpec("ids", (None, 5), "tensor(int64)")]
    feeds = random_feeds(specs, 2)
    assert feeds["x"].shape == (2, 3, 4) and feeds["x"].dtype == np.float32
    assert feeds["ids"].dtype == np.int64 and not feeds["ids"].any()
    assert np.array_equal(random_feeds(specs, 2)["x"], feeds["x"])  # seeded
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        random_feeds([InputSpec("x", (1, 3), "tensor(float)")], 4)
    assert random_feeds([InputSpec("x", (1, 3), "tensor(float)")], 4, strict_batch=False)["x"].shape == (1, 3)
    with pytest.raises(ConfigError, match="pass input_shape"):
        random_feeds([InputSpec("x", (None, None), "tensor(float)")], 1)
    with pytest.raises(ConfigError, match="unsupported type"):
        random_feeds([InputSpec("x", (None, 2), "tensor(string)")], 1)


def test_openvino_bench_spec_validation() -> None:
    with pytest.raises(ConfigError, match="runs on provider 'cpu'"):
        BenchSpec(backend="openvino", provider="cuda")
    p = load_profile("x86-openvino")
    assert p.bench.backend == "openvino" and p.alignment == 8


# ----------------------------------------------------------------------------- OpenVINO itself
@needs_ov
def test_openvino_measure_records_threads_and_hint(onnx_pair: tuple[Path, Path]) -> None:
    from hwprune.runtime.bench import compare, measure

    stats = measure(onnx_pair[0], FAST)
    assert [s.batch for s in stats] == [1, 2]
    for s in stats:
        assert s.backend == "openvino" and 0 < s.min_ms <= s.median_ms <= s.p90_ms <= s.p99_ms
        assert s.extra["openvino_threads"] == 1 and s.extra["performance_hint"] == "LATENCY"
        assert "32" in s.extra["inference_precision"] or "f32" in s.extra["inference_precision"]
        assert s.extra["openvino_version"] and len(s.extra["round_medians_ms"]) == 2
    res = compare(*onnx_pair, FAST)
    assert [r["batch"] for r in res["speedup"]] == [1, 2] and res["dense"][0]["backend"] == "openvino"
    with pytest.raises(ConfigError, match="precision 'fp16'"):
        measure(onnx_pair[0], BenchSpec(backend="openvino", precision="fp16", batch_sizes=(1,), iters=1, repeats=1))


@needs_ov
def test_openvino_parity_against_pytorch_lists_every_mismatch(onnx_pair: tuple[Path, Path]) -> None:
    from hwprune.runtime.openvino import OV_ATOL, OV_RTOL, validate_openvino

    rep = validate_openvino(_net(16), onnx_pair[0])
    assert rep["passed"] and rep["max_abs_diff"] <= OV_ATOL and rep["atol"] == OV_ATOL and rep["rtol"] == OV_RTOL
    assert [r["case"] for r in rep["outputs"]] == ["random_batch1", "random_batch3"]
    with pytest.raises(NumericalMismatchError, match="2 output") as err:
        validate_openvino(_net(16, seed=1), onnx_pair[0])  # other weights: every case mismatches
    assert len(err.value.mismatches) == 2 and all(m["num_violations"] > 0 for m in err.value.mismatches)


@needs_ov
def test_cli_bench_openvino_compare_and_latency_table(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    args = ["--backend", "openvino", "--batch-size", "1", "--iters", "5", "--warmup", "1", "--repeats", "1",
            "--threads", "1"]
    res = CliRunner().invoke(cli, ["bench", "--compare", *map(str, onnx_pair), *args, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["spec"]["backend"] == "openvino" and out["env"]["versions"]["openvino"]
    res = CliRunner().invoke(cli, ["latency-table", "--profile", "x86-openvino", "--model", "mlp", "--input-size", "4",
                                   "--in-channels", "1", "--widths", "8,16", "--iters", "3",
                                   "--cache", str(tmp_path / "c.json"), "--out", str(tmp_path / "lt")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "lt" / "latency_table.json").read_text())["meta"]
    assert meta["backend"] == "openvino"


@needs_ov
def test_select_measure_times_openvino_against_its_own_dense() -> None:
    from hwprune.pipeline.select import measure_profiles
    from hwprune.profiles.machine import detect_machine

    facts = detect_machine()
    if "avx2" not in facts.isa:
        pytest.skip("x86-openvino needs AVX2")
    rows = measure_profiles("mlp", facts, input_size=4, in_channels=1, model_kwargs={"hidden": [32]},
                            profiles=["x86-openvino", "generic-channel"], warmup=1, iters=3, repeats=1)
    by = {r["profile"]: r for r in rows}
    assert {"dense", "dense@openvino", "x86-openvino", "generic-channel"} <= set(by)
    assert by["x86-openvino"]["backend"] == "openvino" and by["x86-openvino"]["speedup"] == pytest.approx(
        by["dense@openvino"]["median_ms"] / by["x86-openvino"]["median_ms"])
    assert sum(r["recommended"] for r in rows) == 1


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_measure_many_reuses_sessions_and_shuffles(backend: str, onnx_pair: tuple[Path, Path]) -> None:
    if backend == "openvino" and not HAS_OV:
        pytest.skip("openvino not installed")
    from hwprune.runtime.bench import measure_many, round_order

    spec = BenchSpec(backend=backend, batch_sizes=(1,), warmup=1, iters=3, repeats=3, threads=1)  # type: ignore[arg-type]
    stats = measure_many(onnx_pair, spec, fresh_sessions=False, shuffle_seed=0)
    assert [len(s) for s in stats] == [1, 1] and all(len(s[0].extra["round_medians_ms"]) == 3 for s in stats)
    orders = [round_order(5, r, {"shuffle_seed": 0}) for r in range(3)]
    assert all(sorted(o) == list(range(5)) for o in orders) and len({tuple(o) for o in orders}) > 1
    assert round_order(3, 0, {}) == [0, 1, 2]
