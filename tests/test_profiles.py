"""Hardware profiles: bundled files, schema errors (library and CLI), rule matching, no torch."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from hwprune.base.errors import ConfigError
from hwprune.cli import cli
from hwprune.profiles import (
    SCHEMA_VERSION,
    ChannelBlockGranularity,
    ChannelGranularity,
    HardwareProfile,
    LayerGranularity,
    NMGranularity,
    NoGranularity,
    bundled_profiles_dir,
    list_profiles,
    load_profile,
    match_rule,
    profile_from_dict,
    profile_to_dict,
    profile_to_yaml,
    unmatched_rules,
)

BUNDLED = list_profiles()
CONV_TYPES = ("Conv2d", "_ConvNd", "Module")
LINEAR_TYPES = ("Linear", "Module")


def _base() -> dict[str, Any]:
    return {
        "schema_version": 1, "name": "t", "device": {"kind": "cpu"},
        "rules": [
            {"match": "re:features\\.0", "granularity": {"kind": "none"}},
            {"match": "Conv2d", "granularity": {"kind": "channel_block", "block": 8}, "fallback": "channel"},
            {"match": "BasicBlock", "granularity": {"kind": "layer"}, "optional": True},
            {"match": "Conv2d", "granularity": {"kind": "nm", "n": 2, "m": 4}, "fallback": {"kind": "none"}},
            {"match": "fc", "granularity": {"kind": "channel"}},
        ],
    }


def test_bundled_profiles_exist_and_cover_targets() -> None:
    assert len(BUNDLED) >= 7
    for name in ("x86-avx2-ort", "x86-avx512-ort", "arm-neon-ort", "nvidia-ampere-trt-fp16", "generic-channel"):
        assert name in BUNDLED
    assert load_profile("x86-avx2-ort").alignment == 8
    assert load_profile("x86-avx512-ort").alignment == 16
    assert load_profile("arm-neon-ort").alignment == 4
    assert load_profile("nvidia-trt-int8").alignment == 32
    for name in ("x86-avx2-ort", "x86-avx512-ort", "arm-neon-ort", "nvidia-ampere-trt-fp16", "nvidia-trt-int8"):
        kinds = {r.granularity.kind for r in load_profile(name).rules}
        assert {"head", "mlp_block"} <= kinds, name  # transformer rules on every hardware profile
    orin = load_profile("jetson-orin-trt-fp16")
    assert orin.has_nm and orin.nm_patterns == ((2, 4),) and orin.device.min_compute_capability == "8.7"
    assert not load_profile("generic-channel").has_nm


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_profile_loads_and_round_trips(name: str) -> None:
    p = load_profile(name)
    assert p.name == name and p.schema_version == SCHEMA_VERSION
    assert p.rules_for_phase("structured"), "every profile prunes something in phase 1"
    assert profile_from_dict(profile_to_dict(p)) == p
    assert profile_from_dict(yaml.safe_load(profile_to_yaml(p))) == p
    assert (p.bench.backend == "tensorrt") == (p.device.kind == "cuda")
    # Every non-nm rule keeps to the structured phase, and has_nm matches the nm rules.
    assert p.has_nm == bool([r for r in p.rules_for_phase("nm") if isinstance(r.granularity, NMGranularity)])


def test_bundled_profiles_validate_via_cli() -> None:
    paths = [str(bundled_profiles_dir() / f"{n}.yaml") for n in BUNDLED]
    result = CliRunner().invoke(cli, ["profile", "validate", *paths])
    assert result.exit_code == 0, result.output
    assert result.output.count("OK ") == len(BUNDLED)


def test_cli_list_and_show() -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["profile", "list"])
    assert res.exit_code == 0
    lines = res.output.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == BUNDLED
    assert "align=8" in next(ln for ln in lines if ln.startswith("nvidia-ampere-trt-fp16")) and "nm=2:4" in res.output
    res = runner.invoke(cli, ["profile", "list", "--json"])
    rows = yaml.safe_load(res.output)
    assert {r["name"]: r["alignment"] for r in rows}["x86-avx512-ort"] == 16
    for fmt in ([], ["--json"]):
        res = runner.invoke(cli, ["profile", "show", "arm-neon-ort", *fmt])
        assert res.exit_code == 0
        assert profile_from_dict(yaml.safe_load(res.output)) == load_profile("arm-neon-ort")


def _rule(i: int, value: dict[str, Any]) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        d["rules"][i] = value
    return edit


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        keys = path.split(".")
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        d[keys[-1]] = value
    return edit


BAD_CASES: dict[str, tuple[Callable[[dict], None], list[str]]] = {
    "unknown_top_key": (_set("ruls", []), ["unknown key 'ruls'", "did you mean 'rules'"]),
    "unknown_rule_key": (lambda d: d["rules"][1].update(granularty=1),
                         ["rules[1]: unknown key 'granularty'", "did you mean 'granularity'", "valid keys:"]),
    "block_str": (_set("rules.1.granularity.block", "8"),
                  ["rules[1].granularity.block: expected an integer, got str '8'"]),
    "block_zero": (_set("rules.1.granularity.block", 0), ["rules[1].granularity.block: block must be >= 1 (got 0)"]),
    "n_ge_m": (_set("rules.3.granularity.n", 4), ["rules[3].granularity.n: n must be < m (got n=4, m=4)"]),
    "n_zero": (_set("rules.3.granularity.n", 0), ["rules[3].granularity.n: n must be >= 1"]),
    "unknown_kind": (_set("rules.4.granularity.kind", "chanel"),
                     ["rules[4].granularity.kind: unknown granularity 'chanel'", "did you mean 'channel'",
                      "valid kinds: unstructured, channel, channel_block"]),
    "missing_block": (lambda d: d["rules"][1]["granularity"].pop("block"),
                      ["rules[1].granularity: missing required key 'block'"]),
    "bad_regex": (_set("rules.0.match", "re:features(["), ["rules[0].match: invalid regex"]),
    "schema_version": (_set("schema_version", 2), ["schema_version: unsupported schema_version 2"]),
    "no_schema_version": (lambda d: d.pop("schema_version"), ["missing required key 'schema_version'"]),
    "empty_rules": (_set("rules", []), ["rules: must contain at least one rule"]),
    "device_kind": (_set("device.kind", "gpu"), ["device.kind: unknown value 'gpu'", "valid: cpu, cuda"]),
    "optional_str": (_set("rules.2.optional", "yes"), ["rules[2].optional: expected true/false"]),
    "fallback_phase": (_set("rules.1.fallback", {"kind": "nm", "n": 2, "m": 4}), ["rules[1].fallback:"]),
    "trt_on_cpu": (_set("bench", {"backend": "tensorrt"}), ["bench.provider:", "needs provider 'cuda'"]),
    "batch_sizes": (_set("bench", {"batch_sizes": [1, 0]}), ["bench.batch_sizes:"]),
    "bad_weight_mode": (_set("weight_mode", "flop"), ["weight_mode: unknown value 'flop'", "did you mean 'flops'"]),
    "head_fallback": (_rule(4, {"match": "Attn", "granularity": "head", "fallback": "channel"}),
                      ["rules[4].fallback:", "granularity 'head' takes a fallback of kind none"]),
    "head_param": (_rule(4, {"match": "Attn", "granularity": {"kind": "head", "block": 2}}),
                   ["rules[4].granularity: unknown key 'block'"]),
    "mlp_block_zero": (_rule(4, {"match": "re:.*mlp", "granularity": {"kind": "mlp_block", "block": 0}}),
                       ["rules[4].granularity.block: block must be >= 1 (got 0)"]),
    "mlp_block_missing": (_rule(4, {"match": "re:.*mlp", "granularity": "mlp_block"}),
                          ["rules[4].granularity: missing required key 'block'"]),
    "mlp_block_fallback": (_rule(4, {"match": "re:.*mlp", "granularity": {"kind": "mlp_block", "block": 64},
                                            "fallback": "kernel_shape"}),
                           ["granularity 'mlp_block' takes a fallback of kind channel, channel_block, none"]),
}


def _write_bad(tmp_path: Path, case: str) -> Path:
    d = copy.deepcopy(_base())
    BAD_CASES[case][0](d)
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def _assert_cli_one_line_error(args: list[str], expected: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_profile_gives_one_line_error(tmp_path: Path, case: str) -> None:
    path = _write_bad(tmp_path, case)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    for text in BAD_CASES[case][1]:
        assert text in msg
    _assert_cli_one_line_error(["profile", "validate", str(path)], [str(path), *BAD_CASES[case][1]])


def test_base_profile_is_valid(tmp_path: Path) -> None:
    """The fixture the bad cases mutate is itself valid (so each case fails for its own reason)."""
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(_base()))
    assert load_profile(path).name == "t"


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("schema_version: 1\nrules:\n  - match: Conv2d\n    granularity: {kind: channel\n")
    _assert_cli_one_line_error(["profile", "validate", str(path)], [str(path), "invalid YAML", "line "])
    path.write_text("- just\n- a list\n")
    _assert_cli_one_line_error(["profile", "validate", str(path)], ["expected a mapping at the top level"])


def test_missing_file_and_unknown_name() -> None:
    _assert_cli_one_line_error(["profile", "show", "/nonexistent/p.yaml"],
                               ["profile file not found: /nonexistent/p.yaml", "x86-avx2-ort"])
    _assert_cli_one_line_error(["profile", "show", "x86-avx2-ortt"],
                               ["unknown profile 'x86-avx2-ortt'", "did you mean 'x86-avx2-ort'", "generic-channel"])


def test_validate_reports_every_file(tmp_path: Path) -> None:
    bad = _write_bad(tmp_path, "n_ge_m")
    res = CliRunner().invoke(cli, ["profile", "validate", str(bad), "generic-channel"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "INVALID" in res.output and "OK      generic-channel" in res.output


def test_path_versus_bundled_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mine = {**_base(), "name": "x86-avx2-ort"}
    (tmp_path / "x86-avx2-ort").write_text(yaml.safe_dump(mine))
    (tmp_path / "x86-avx2-ort.yaml").write_text(yaml.safe_dump(mine))
    bundled = load_profile("x86-avx2-ort")
    assert bundled.device.isa == ("avx2", "fma")  # bare name -> bundled, not the file in cwd
    assert load_profile("./x86-avx2-ort").device.isa == ()  # contains '/' -> path
    assert load_profile("x86-avx2-ort.yaml").device.isa == ()  # .yaml suffix -> path
    (tmp_path / "custom").write_text(yaml.safe_dump({k: v for k, v in _base().items() if k != "name"}))
    assert load_profile("custom").name == "custom"  # not bundled, existing file; name from the stem


def test_rule_matching_first_match_per_phase() -> None:
    p = profile_from_dict(_base())
    s, nm = "structured", "nm"
    assert isinstance(match_rule(p, s, "features.0", CONV_TYPES).granularity, NoGranularity)
    assert isinstance(match_rule(p, nm, "features.0", CONV_TYPES).granularity, NoGranularity)  # none: both phases
    assert match_rule(p, s, "features.3", CONV_TYPES).granularity == ChannelBlockGranularity(8)
    assert match_rule(p, nm, "features.3", CONV_TYPES).granularity == NMGranularity(2, 4)
    # regex is a full match: "features.01" and "xfeatures.0" fall through to the Conv2d rule
    assert match_rule(p, s, "features.01", CONV_TYPES).granularity == ChannelBlockGranularity(8)
    assert match_rule(p, s, "xfeatures.0", CONV_TYPES).granularity == ChannelBlockGranularity(8)
    # type names come from the MRO: a Conv2d subclass matches "Conv2d"
    assert match_rule(p, s, "stem", ("MyConv", *CONV_TYPES)).granularity == ChannelBlockGranularity(8)
    assert match_rule(p, s, "layer1.0", ("BasicBlock", "Module")).granularity == LayerGranularity()
    assert match_rule(p, nm, "layer1.0", ("BasicBlock", "Module")) is None
    assert match_rule(p, s, "fc", LINEAR_TYPES).granularity == ChannelGranularity()  # exact name
    assert match_rule(p, nm, "fc", LINEAR_TYPES) is None
    assert match_rule(p, s, "head", LINEAR_TYPES) is None
    assert [r.granularity.kind for r in p.rules_for_phase(nm)] == ["none", "nm"]
    assert p.has_nm and p.alignment == 8
    with pytest.raises(ConfigError, match="unknown phase"):
        match_rule(p, "struct", "fc", LINEAR_TYPES)


def test_unmatched_rules_skips_optional() -> None:
    p = profile_from_dict(_base())
    records = [("features.0", CONV_TYPES), ("features.3", CONV_TYPES)]
    assert [r.match for r in unmatched_rules(p, "structured", records)] == ["fc"]  # BasicBlock is optional
    assert unmatched_rules(p, "nm", records) == []
    assert [r.match for r in unmatched_rules(p, "nm", [("fc", LINEAR_TYPES)])] == ["re:features\\.0", "Conv2d"]


def test_dataclasses_validate_and_are_frozen() -> None:
    with pytest.raises(ConfigError, match="n must be < m"):
        NMGranularity(2, 2)
    with pytest.raises(ConfigError, match="expected an integer"):
        ChannelBlockGranularity("8")  # type: ignore[arg-type]
    p = load_profile("generic-channel")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "other"  # type: ignore[misc]
    assert isinstance(p.rules, tuple) and isinstance(p, HardwareProfile)


def test_import_profiles_does_not_import_torch() -> None:
    code = ("import sys, hwprune.profiles as P; [P.load_profile(n) for n in P.list_profiles()]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)
