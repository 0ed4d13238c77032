"""Width staircase detection and 'hwprune profile calibrate' on a tiny sweep (fake timings).

Also: calibrated profiles in the user's profile directory and their ranking, and the TensorRT calibration
path against the fake module.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from hwprune.base.errors import ConfigError, MissingBackendError
from hwprune.cli import cli
from hwprune.profiles import load_profile, profile_from_dict, profile_to_dict
from hwprune.profiles.calibration import CalibrationInfo
from hwprune.profiles.io import list_user_profiles, user_profiles_dir
from hwprune.profiles.machine import MachineFacts, best_profile, load_all, rank_profiles
from hwprune.runtime import bench
from hwprune.runtime import trt as _trt
from hwprune.runtime.bench import summarize
from hwprune.runtime.calibrate import CalibrationSettings, calibrate, calibrated_profile, probe_model, write_calibration
from hwprune.runtime.staircase import find_staircase, rounding_cost, step_cost, step_width
from tests import fake_tensorrt

HERE = MachineFacts("amd", "Fake EPYC 9999", "x86_64", frozenset({"avx2", "fma", "avx512f"}), 2)
OTHER = MachineFacts("intel", "Some Xeon", "x86_64", frozenset({"avx2", "fma", "avx512f"}), 2)
W = tuple(range(32, 129))


def flat_stairs(w: np.ndarray, b: int) -> np.ndarray:
    return 0.1 + 0.02 * np.ceil(w / b)


def sawtooth(w: np.ndarray, b: int) -> np.ndarray:
    return 0.1 + 0.002 * w + np.where(w % b == 0, 0.0, 0.08)


def _rounds(curve: np.ndarray, rounds: int = 5, noise: float = 0.002, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return curve[None] * (1 + noise * rng.standard_normal((rounds, curve.size)))


# ----------------------------------------------------------------------------- staircase
@pytest.mark.parametrize(("shape", "block"), [(flat_stairs, 8), (flat_stairs, 16), (sawtooth, 4), (sawtooth, 16)])
def test_staircase_finds_the_block(shape: Any, block: int) -> None:
    w = np.asarray(W)
    st = find_staircase(W, _rounds(shape(w, block)))
    assert st.block == block and not st.ambiguous and st.confidence >= 0.9, st.reason
    assert st.rho[block] <= 0.5 < st.rho[2 * block]


def test_linear_curve_has_no_staircase_and_flat_curve_is_ambiguous() -> None:
    w = np.asarray(W, dtype=float)
    st = find_staircase(W, _rounds(0.1 + 0.003 * w))
    assert st.block == 1 and not st.ambiguous and rounding_cost(W, 0.1 + 0.003 * w, 2) == pytest.approx(1.0)
    flat = find_staircase(W, _rounds(np.full(w.size, 0.05), noise=0.05))
    assert flat.ambiguous and "does not follow width" in flat.reason


def test_staircase_is_deterministic_and_noise_makes_it_ambiguous() -> None:
    w = np.asarray(W)
    data = _rounds(flat_stairs(w, 8), noise=0.002)
    assert find_staircase(W, data) == find_staircase(W, data.copy())
    noisy = find_staircase(W, _rounds(0.1 + 0.0004 * w + np.where(w % 8 == 0, 0.0, 0.004), noise=0.08, seed=3))
    assert noisy.ambiguous and "ambiguous" in noisy.reason and noisy.alternatives


def test_staircase_errors_and_step_helpers() -> None:
    with pytest.raises(ConfigError, match="consecutive"):
        find_staircase([1, 2, 4], np.ones((2, 3)))
    with pytest.raises(ConfigError, match="rounds"):
        find_staircase([1, 2, 3], np.ones((2, 4)))
    with pytest.raises(ConfigError, match="positive"):
        find_staircase([1, 2, 3], np.zeros((2, 3)))
    assert [step_width(w, 8) for w in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 24]
    assert step_width(60, 16, full=56) == 56
    assert step_cost([8, 16, 24, 32], [1.0, 2.0, 3.0, 4.0], 17, 8) == 3.0


# ----------------------------------------------------------------------------- calibrate (fake timings)
TINY = CalibrationSettings(kinds=("conv", "linear"), min_width=8, max_block=4, repeats=3, iters=2, warmup=0)


def fake_runner(blocks: dict[str, int], calls: list[dict[str, Any]] | None = None):
    """A worker stand-in: latency of kind k at width w follows a sawtooth with block blocks[k]."""
    def run(req: dict[str, Any]) -> list[list[dict[str, Any]]]:
        if calls is not None:
            calls.append(req)
        out = []
        rng = np.random.default_rng(1)
        for path in req["paths"]:
            kind, width = re.match(r"(\w+?)-(\d+)\.onnx", Path(path).name).groups()  # type: ignore[union-attr]
            base = float(sawtooth(np.asarray([int(width)]), blocks[kind])[0])
            rounds = [[base * (1 + 0.001 * rng.standard_normal())] * req["iters"] for _ in range(req["repeats"])]
            meta = {k: req[k] for k in ("backend", "provider", "precision", "threads", "warmup", "iters", "repeats")}
            out.append([summarize(rounds, batch=b, meta=meta).to_dict() for b in req["batch_sizes"]])
        return out
    return run


def test_probe_models_have_the_width() -> None:
    import torch

    for kind in ("conv", "depthwise", "linear", "attention_mlp"):
        mod, shape = probe_model(kind, 12)
        y = mod(torch.zeros(2, *shape))
        assert y.shape[0] == 2
        widths = {p.shape[0] for n, p in mod.named_parameters() if n.endswith("weight")}
        assert 12 in widths
    with pytest.raises(ConfigError, match="unknown layer kind"):
        probe_model("lstm", 8)


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX probes of the tiny sweep, exported once for the module."""
    return tmp_path_factory.mktemp("probes")


def test_calibrate_tiny_sweep_writes_a_validated_profile(tmp_path: Path, probes: Path) -> None:
    calls: list[dict[str, Any]] = []
    res = calibrate(TINY, facts=HERE, runner=fake_runner({"conv": 4, "linear": 2}, calls), probe_dir=probes)
    assert res.blocks() == {"conv": 4, "linear": 2} and res.ambiguous() == []
    (req,) = calls  # one worker for every probe: interleaved, shuffled per round
    assert len(req["paths"]) == 2 * len(TINY.widths) and req["shuffle_seed"] == 0 and req["batch_sizes"] == [1]
    assert TINY.widths == tuple(range(8, 21))
    prof, files = write_calibration(res, tmp_path / "mine.yaml", fallback_block=16)
    assert load_profile(tmp_path / "mine.yaml") == prof and prof.name == "mine"
    blocks = {r.match: r.granularity.block for r in prof.rules if r.match in ("Conv2d", "Linear")}  # type: ignore[union-attr]
    assert blocks == {"Conv2d": 4, "Linear": 2}
    assert [r.granularity.kind for r in prof.rules[:2]] == ["head", "head"]  # the bundled transformer rules
    assert "mlp_block" not in {r.granularity.kind for r in prof.rules}  # attention_mlp was not measured
    cal = prof.calibration
    assert cal is not None and cal.cpu_model == HERE.cpu_model and cal.cores == 2 and cal.backend == "onnxruntime"
    assert dict(cal.blocks) == {"conv": 4, "linear": 2} and "onnxruntime" in dict(cal.versions)
    assert files["csv"].read_text().splitlines()[0].startswith("kind,width,median_ms")
    assert files["png"].stat().st_size > 1000 and cal.curves == files["csv"].name


def test_ambiguous_kind_uses_the_fallback_block(probes: Path) -> None:
    def flat(req: dict[str, Any]) -> list[list[dict[str, Any]]]:
        meta = {k: req[k] for k in ("backend", "provider", "precision", "threads", "warmup", "iters", "repeats")}
        rng = np.random.default_rng(2)
        return [[summarize([[0.05 * (1 + 0.05 * rng.standard_normal())] for _ in range(req["repeats"])], batch=1,
                           meta=meta).to_dict()] for _ in req["paths"]]

    res = calibrate(TINY, facts=HERE, runner=flat, probe_dir=probes)
    assert set(res.ambiguous()) == {"conv", "linear"}
    prof = calibrated_profile(res, fallback_block=16)
    assert {r.granularity.block for r in prof.rules if r.granularity.kind != "head"} == {16}  # type: ignore[union-attr]
    assert prof.calibration is not None and set(prof.calibration.ambiguous) == {"conv", "linear"}
    assert "ambiguous" in prof.notes


def test_calibration_metadata_round_trip_and_errors() -> None:
    d = profile_to_dict(load_profile("x86-avx2-ort"))
    d["calibration"] = {"backend": "openvino", "provider": "cpu", "precision": "fp32", "threads": 1, "batch": 1,
                        "blocks": {"conv": 16}, "machine": {"cpu_model": "X", "cores": 2, "arch": "x86_64"}}
    p = profile_from_dict(d)
    assert p.calibration is not None and p.calibration.block("conv") == 16 and p.calibration.block("linear", 8) == 8
    assert profile_from_dict(profile_to_dict(p)) == p
    for bad, match in [({"blocks": {"cnv": 3}}, "calibration.blocks"), ({"bogus": 1}, "calibration.bogus"),
                       ({"machine": {"cpu_model": "X"}}, "calibration.machine.cores"),
                       ({"ambiguous": ["lstm"]}, "calibration.ambiguous")]:
        with pytest.raises(ConfigError, match=re.escape(match)):
            profile_from_dict({**d, "calibration": {**d["calibration"], **bad}})


# ----------------------------------------------------------------------------- user profile directory, ranking
def _calibrated(name: str, facts: MachineFacts, backend: str = "onnxruntime") -> dict[str, Any]:
    d = profile_to_dict(load_profile("x86-avx2-ort"))
    d.update(name=name, bench={**d["bench"], "backend": backend})
    d["calibration"] = {"backend": backend, "provider": "cpu", "precision": "fp32", "threads": 1, "batch": 1,
                        "blocks": {"conv": 16, "linear": 8},
                        "machine": {"cpu_model": facts.cpu_model, "cores": facts.cores, "arch": facts.arch}}
    return d


def test_user_profile_dir_and_calibrated_ranking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    monkeypatch.setenv("HWPRUNE_PROFILE_DIR", str(tmp_path / "profiles"))
    assert user_profiles_dir() == tmp_path / "profiles" and list_user_profiles() == []
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "cal-here.yaml").write_text(yaml.safe_dump(_calibrated("cal-here", HERE)))
    (tmp_path / "profiles" / "broken.yaml").write_text("schema_version: 1\nname: [")
    (tmp_path / "profiles" / "x86-avx2-ort.yaml").write_text(yaml.safe_dump(_calibrated("x86-avx2-ort", HERE)))
    assert load_profile("cal-here").calibration is not None  # user profiles load by name
    assert load_profile("x86-avx2-ort").calibration is None  # a bundled name wins
    names = [p.name for p in load_all(None)]
    assert names.count("x86-avx2-ort") == 1 and "cal-here" in names  # invalid file skipped
    assert best_profile(HERE).name == "cal-here"
    listed = json.loads(CliRunner().invoke(cli, ["profile", "list", "--json"]).stdout)
    assert [r["name"] for r in listed if r["source"] != "bundled"] == ["cal-here"]
    top = rank_profiles(HERE)[0]
    assert top.name == "cal-here" and "calibrated on Fake EPYC 9999" in top.reasons[0]
    other = next(m for m in rank_profiles(OTHER) if m.name == "cal-here")
    assert not other.matched and "this machine is Some Xeon" in other.reasons[0]
    assert best_profile(OTHER).name == "x86-avx512-ort"
    monkeypatch.delenv("HWPRUNE_PROFILE_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert user_profiles_dir() == tmp_path / "xdg" / "hwprune" / "profiles"


def test_calibration_info_matches_machine() -> None:
    info = CalibrationInfo("tensorrt", "cuda", "fp16", 0, 1, (("conv", 8),), "EPYC", 64, "x86_64", gpu="A100")
    assert info.matches_machine("EPYC", 64, "A100") and not info.matches_machine("EPYC", 64, "H100")
    assert not info.matches_machine("EPYC", 32, "A100")


# ----------------------------------------------------------------------------- CLI and TensorRT
def test_cli_calibrate_missing_tensorrt_is_one_line_exit_2(tmp_path: Path) -> None:
    if "tensorrt" in sys.modules:
        pytest.skip("tensorrt imported")
    res = CliRunner().invoke(cli, ["profile", "calibrate", "--backend", "tensorrt", "--out", str(tmp_path / "t.yaml")])
    assert res.exit_code == 2 and "hwprune[trt]" in res.output and len(res.output.strip().splitlines()) == 1


def test_cli_calibrate_writes_profile(tmp_path: Path, probes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hwprune.runtime.calibrate as cal_mod

    real = cal_mod.calibrate
    runner = fake_runner({"conv": 4, "depthwise": 2, "linear": 2, "attention_mlp": 1})
    monkeypatch.setattr(cal_mod, "calibrate",
                        lambda s, facts=None: real(s, facts=HERE, probe_dir=probes, runner=runner))
    out = tmp_path / "c.yaml"
    res = CliRunner().invoke(cli, ["profile", "calibrate", "--out", str(out), "--kinds", "conv,linear",
                                   "--min-width", "8", "--max-block", "4", "--repeats", "3", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["curves"]["conv"]["block"] == 4 and load_profile(out).calibration is not None
    res = CliRunner().invoke(cli, ["profile", "calibrate", "--repeats", "1"])
    assert res.exit_code == 2


def test_tensorrt_calibration_against_the_fake(monkeypatch: pytest.MonkeyPatch, probes: Path) -> None:
    trt = fake_tensorrt.make_module()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    real_build = _trt.build_engine
    built: list[str] = []

    def build(path: str, precision: str, **kw: Any) -> tuple[bytes, _trt.BuildInfo]:
        _, info = real_build(path, precision, **kw)  # the real builder calls, against the fake
        built.append(Path(path).name)
        return Path(path).name.encode(), info  # engine bytes name the probe, so the fake timer can tell widths

    def time_engine(engine: bytes, name: str, shape: tuple[int, ...], warmup: int, iters: int) -> list[float]:
        kind, width = re.match(r"(\w+?)-(\d+)\.onnx", engine.decode()).groups()  # type: ignore[union-attr]
        return [0.1 + 0.02 * float(np.ceil(int(width) / (4 if kind == "conv" else 2)))] * iters

    monkeypatch.setattr(_trt, "build_engine", build)
    monkeypatch.setattr(_trt, "time_engine", time_engine)
    settings = CalibrationSettings(backend="tensorrt", provider="cuda", precision="fp16", kinds=("conv", "linear"),
                                   min_width=8, max_block=4, repeats=2, iters=2, warmup=0)
    res = calibrate(settings, facts=MachineFacts("amd", "EPYC", "x86_64", frozenset(), 8, (("A100", "8.0"),)),
                    runner=bench.run_request, probe_dir=probes)
    assert res.blocks() == {"conv": 4, "linear": 2} and len(built) == 2 * len(settings.widths)
    assert [c[0] for c in trt.calls].count("builder.build_serialized_network") == len(built)
    prof = calibrated_profile(res)
    assert prof.bench.backend == "tensorrt" and prof.device.kind == "cuda"
    assert prof.device.min_compute_capability == "8.0" and prof.calibration.gpu == "A100"  # type: ignore[union-attr]
    with pytest.raises(MissingBackendError):
        from hwprune.runtime.availability import require_backend

        monkeypatch.delitem(sys.modules, "tensorrt")
        require_backend("tensorrt", "cuda")
