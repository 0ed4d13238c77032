"""Profile selection: ranking and reasons on mocked machines, cpuinfo parsing, measured selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hwprune.base.errors import ConfigError
from hwprune.pipeline.select import measure_profiles
from hwprune.profiles import load_profile
from hwprune.profiles.machine import (
    MachineFacts,
    best_profile,
    cuda_family,
    facts_from_cpuinfo,
    rank_profiles,
)

AVX512_INTEL = MachineFacts("intel", "Xeon Gold 6338", "x86_64",
                            frozenset({"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw"}), 32)
AVX2_AMD = MachineFacts("amd", "EPYC", "x86_64", frozenset({"avx", "avx2", "fma"}), 2)
ARM_NEON = MachineFacts("arm", "Neoverse-N1", "aarch64", frozenset({"fp", "asimd", "neon"}), 16)
A100_BOX = MachineFacts("amd", "EPYC", "x86_64", frozenset({"avx2", "fma"}), 64, (("NVIDIA A100-SXM4-40GB", "8.0"),))
H100_BOX = MachineFacts("intel", "Xeon", "x86_64", frozenset({"avx2", "fma", "avx512f"}), 64,
                        (("NVIDIA H100 80GB HBM3", "9.0"),))
ORIN_BOX = MachineFacts("arm", "Cortex-A78AE", "aarch64", frozenset({"asimd", "neon"}), 12, (("Orin", "8.7"),))
RTX4090_BOX = MachineFacts("amd", "Ryzen", "x86_64", frozenset({"avx2", "fma"}), 16, (("RTX 4090", "8.9"),))
BARE = MachineFacts("unknown", "riscv", "riscv64", frozenset(), 1)


def _names(facts: MachineFacts) -> list[str]:
    return [m.name for m in rank_profiles(facts) if m.matched]


def _match(facts: MachineFacts, name: str):
    return next(m for m in rank_profiles(facts) if m.name == name)


def test_avx512_box_prefers_avx512_over_avx2_over_generic() -> None:
    names = _names(AVX512_INTEL)
    # x86-openvino needs the same ISA as x86-avx2-ort: equal score, ties broken by name
    assert names[:4] == ["x86-avx512-ort", "x86-avx2-ort", "x86-openvino", "generic-channel"]
    assert "arm-neon-ort" not in names and not any(n.startswith(("nvidia", "jetson")) for n in names)
    assert best_profile(AVX512_INTEL).name == "x86-avx512-ort"
    m = _match(AVX512_INTEL, "x86-avx512-ort")
    assert m.score > _match(AVX512_INTEL, "x86-avx2-ort").score
    assert any("avx512f" in r for r in m.reasons)


def test_avx2_box_does_not_match_avx512_and_names_missing_flag() -> None:
    m = _match(AVX2_AMD, "x86-avx512-ort")
    assert not m.matched and m.score == 0
    assert any("avx512f missing" in r for r in m.reasons)
    assert best_profile(AVX2_AMD).name == "x86-avx2-ort"


def test_arm_box_picks_neon_and_rejects_x86() -> None:
    assert best_profile(ARM_NEON).name == "arm-neon-ort"
    m = _match(ARM_NEON, "x86-avx2-ort")
    assert not m.matched and any("arch x86_64 required" in r for r in m.reasons)


def test_gpu_boxes_pick_matching_generation() -> None:
    assert best_profile(A100_BOX).name == "nvidia-ampere-trt-fp16"
    hopper = _match(A100_BOX, "nvidia-hopper-trt-fp16")
    assert not hopper.matched and any("9.0" in r and "8.0" in r for r in hopper.reasons)
    assert not _match(A100_BOX, "jetson-orin-trt-fp16").matched  # 8.0 < 8.7
    assert best_profile(H100_BOX).name == "nvidia-hopper-trt-fp16"
    assert _match(H100_BOX, "nvidia-ampere-trt-fp16").matched  # older profiles still run on Hopper
    # GPU profiles outrank CPU profiles on a GPU machine; the CPU ones still match.
    names = _names(H100_BOX)
    assert names.index("nvidia-ampere-trt-fp16") < names.index("x86-avx512-ort")
    assert best_profile(ORIN_BOX).name == "jetson-orin-trt-fp16"
    assert best_profile(RTX4090_BOX).name == "nvidia-ampere-trt-fp16"  # 8.9 is not the Orin chip
    orin = _match(RTX4090_BOX, "jetson-orin-trt-fp16")
    assert orin.matched and any("chip-specific" in r for r in orin.reasons)


def test_bare_box_gets_generic_with_ties_by_name() -> None:
    ranked = [m for m in rank_profiles(BARE) if m.matched]
    assert [m.name for m in ranked] == ["generic-channel", "cpu-ort-kernel-shape", "generic-unstructured"]
    assert ranked[1].score == ranked[2].score  # tie broken by name
    assert best_profile(BARE).name == "generic-channel"


def test_no_match_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="no hardware profile matches"):
        best_profile(BARE, profiles=["x86-avx2-ort", "nvidia-trt-int8"])


def test_ranking_is_deterministic_and_accepts_profile_objects() -> None:
    profiles = [load_profile("x86-avx2-ort"), load_profile("generic-channel")]
    a = rank_profiles(AVX512_INTEL, profiles)
    b = rank_profiles(AVX512_INTEL, list(reversed(profiles)))
    assert a == b and [m.name for m in a] == ["x86-avx2-ort", "generic-channel"]


def test_facts_from_cpuinfo_x86_and_arm() -> None:
    x86 = "vendor_id\t: GenuineIntel\nmodel\t\t: 106\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 fma avx512f\n"
    f = facts_from_cpuinfo(x86, "x86_64", cores=4)
    assert (f.cpu_vendor, f.cpu_model, f.arch, f.cores) == ("intel", "Intel Xeon", "x86_64", 4)
    assert {"avx2", "fma", "avx512f"} <= f.isa
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\n"
    g = facts_from_cpuinfo(arm, "arm64")
    assert g.arch == "aarch64" and g.cpu_vendor == "arm" and {"asimd", "neon"} <= g.isa
    assert best_profile(g).name == "arm-neon-ort"
    assert cuda_family("8.6") == "ampere" and cuda_family("9.0") == "hopper" and cuda_family("8.9") == "ada"


def test_cli_select_json_lists_every_profile() -> None:
    from hwprune.cli import cli

    res = CliRunner().invoke(cli, ["select", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {m["name"] for m in out["ranking"]} >= {"generic-channel", "x86-avx2-ort", "nvidia-trt-int8"}
    assert out["ranking"][0]["matched"] and out["machine"]["arch"]


def test_measure_profiles_tiny_model_recommends_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    # Latency faked as a deterministic function of the exported model (ONNX bytes), so the test checks
    # measure_profiles' own work -- pruning, the speed-up it computes, the row it recommends -- and not
    # timing noise (timing targets live in benchmarks/).
    import types
    from pathlib import Path

    import hwprune.runtime.bench as bench

    def fake_measure(path: Path, spec: object, batch_size: int = 1) -> list[types.SimpleNamespace]:
        ms = Path(path).stat().st_size / 1e4
        return [types.SimpleNamespace(median_ms=ms, p90_ms=1.1 * ms)]

    monkeypatch.setattr(bench, "measure", fake_measure)
    rows = measure_profiles("mlp", BARE, sparsity=0.5, input_size=4, in_channels=1,
                            model_kwargs={"hidden": [64, 32]}, profiles=["generic-channel", "nvidia-trt-int8"],
                            warmup=1, iters=3, repeats=1)
    by = {r["profile"]: r for r in rows}
    assert set(by) == {"dense", "generic-channel"}  # int8 profile does not match a GPU-less box
    pruned, dense = by["generic-channel"], by["dense"]
    assert pruned["params"] < dense["params"] and pruned["macs"] < dense["macs"]
    assert pruned["speedup"] == pytest.approx(dense["median_ms"] / pruned["median_ms"])
    assert pruned["speedup"] > 1.5  # about half the channels gone: the smaller file times faster here
    assert [r["profile"] for r in rows if r["recommended"]] == ["generic-channel"]
    assert dense["speedup"] == pytest.approx(1.0) and not dense["recommended"]


def test_measure_profiles_skips_unavailable_backend() -> None:
    rows = measure_profiles("mlp", A100_BOX, input_size=4, in_channels=1, model_kwargs={"hidden": [16]},
                            profiles=["nvidia-trt-int8"], warmup=0, iters=1, repeats=1)
    assert len(rows) == 1 and rows[0]["status"] == "skipped" and "tensorrt" in rows[0]["reason"]
    assert not rows[0]["recommended"]


def test_measure_never_recommends_a_profile_that_removes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import types
    from pathlib import Path

    import hwprune.runtime.bench as bench

    def fake_measure(path: Path, spec: object, batch_size: int = 1) -> list[types.SimpleNamespace]:
        ms = 0.5 if "unstructured" in Path(path).name else 1.0  # the mask profile "wins" the noisy timing
        return [types.SimpleNamespace(median_ms=ms, p90_ms=ms)]

    monkeypatch.setattr(bench, "measure", fake_measure)
    rows = measure_profiles("mlp", BARE, sparsity=0.5, input_size=4, in_channels=1, model_kwargs={"hidden": [16]},
                            profiles=["generic-unstructured", "generic-channel"], warmup=0, iters=1, repeats=1)
    by = {r["profile"]: r for r in rows}
    assert by["generic-unstructured"]["removed"] == 0 and "removes nothing" in by["generic-unstructured"]["reason"]
    assert [r["profile"] for r in rows if r["recommended"]] == ["generic-channel"]
    only_mask = measure_profiles("mlp", BARE, sparsity=0.5, input_size=4, in_channels=1,
                                 model_kwargs={"hidden": [16]}, profiles=["generic-unstructured"], warmup=0, iters=1,
                                 repeats=1)
    assert not any(r["recommended"] for r in only_mask)


def test_cli_explains_why_measured_and_static_rankings_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import hwprune.pipeline.select as sel
    from hwprune.cli import cli
    from hwprune.profiles.machine import rank_profiles

    static = next(m.name for m in rank_profiles(sel.detect_machine()) if m.matched)
    other = "generic-channel" if static != "generic-channel" else "x86-avx2-ort"
    row = {"profile": other, "status": "measured", "recommended": True, "median_ms": 1.0, "p90_ms": 1.0,
           "speedup": 1.5, "params": 1, "macs": 1, "reason": "8 channels removed", "removed": 8}
    monkeypatch.setattr(sel, "measure_profiles", lambda *a, **k: [row])
    r = CliRunner().invoke(cli, ["select", "--measure", "mlp", "--in-channels", "1", "--input-size", "4"])
    assert r.exit_code == 0, r.output
    assert f"recommended: {other}" in r.output and "why the rankings differ" in r.output and static in r.output


def test_why_the_rankings_differ_is_one_sentence_only_when_they_do() -> None:
    from hwprune.cli.select import _why_rankings_differ

    assert _why_rankings_differ("x86-avx2-ort", "x86-avx2-ort", "mlp", 0.5) is None
    assert _why_rankings_differ("x86-avx2-ort", None, "mlp", 0.5) is None
    why = _why_rankings_differ("x86-avx2-ort", "generic-channel", "mlp", 0.5)
    assert why is not None and "top: x86-avx2-ort" in why and "--profile generic-channel" in why


def test_cli_profile_validate_json(tmp_path: Path) -> None:
    from hwprune.cli import cli

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [\n")
    res = CliRunner().invoke(cli, ["profile", "validate", "--json", "generic-channel", str(bad)])
    assert res.exit_code == 2
    out = json.loads(res.stdout)
    assert [r["valid"] for r in out] == [True, False]
    assert out[0]["name"] == "generic-channel" and out[0]["rules"]["total"] >= 1
    assert "bad.yaml" in out[1]["error"]
