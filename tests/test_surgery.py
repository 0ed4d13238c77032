"""Tests for hwprune.surgery.remove: zero groups -> smaller dense model with the same function."""

from __future__ import annotations

import ast
import copy
import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups import GroupSet, build_groups
from hwprune.models import create_model
from hwprune.profiles import list_profiles, load_profile, profile_from_dict
from hwprune.surgery.modelio import load_model, save_model
from hwprune.surgery.remove import (
    ATOL,
    RTOL,
    SurgeryEquivalenceError,
    SurgeryPlan,
    apply_plan,
    check_equivalence,
    remove_zero_groups,
)
from tests.tiny_models import TINY_MODELS, count_params, example_input

ALL = sorted(TINY_MODELS)
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """Tiny convs: intra-op threads only add contention on a shared CPU (10x slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def prof(rules: list[dict]) -> object:
    return profile_from_dict({"name": "t", "schema_version": 1, "description": "",
                              "device": {"kind": "cpu", "vendor": "x", "arch": "x"}, "rules": rules})


def rule(match: str, kind: str, **params) -> dict:
    return {"match": match, "granularity": {"kind": kind, **params}, "optional": True}


PROFILES = {
    "channel": prof([rule("Conv2d", "channel"), rule("Linear", "channel")]),
    "channel_block": prof([rule("Conv2d", "channel_block", block=4), rule("Linear", "channel_block", block=4)]),
}
LAYER = prof([rule("TinyBlock", "layer")])


def _zero_random(gs: GroupSet, seed: int, frac: float) -> list[int]:
    """Zero ``round(frac * m)`` (>= 1) random removable groups of every scope; returns their ids."""
    gen = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for s in range(gs.num_scopes):
        members = [int(i) for i in torch.nonzero(gs.scope_index == s).flatten() if gs.removable[i]]
        n = max(1, round(frac * len(members))) if members else 0
        ids.extend(members[int(j)] for j in torch.randperm(len(members), generator=gen)[:n])
    gs.zero_(sorted(ids))
    return sorted(ids)


def _out_width(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


def _predicted_params(model: nn.Module, gs: GroupSet) -> int:
    """Parameter count after surgery, from the zero groups and their coupled consumers' input columns.

    Per coupled set: all-zero except the first group when every group is zero (a set is never
    emptied). Removed = the removed groups' elements + for every consumer conv/linear, ``removed
    inputs * kept outputs * kh*kw / groups``. Layer groups remove the whole branch.
    """
    mods = dict(model.named_modules())
    zero = ~gs.nonzero()
    removed, r_out, r_in = 0, {}, {}
    for layer in gs.to_json()["layers"]:
        ids = range(layer["first"], layer["first"] + layer["groups"])
        if layer["kind"] == "layer":
            removed += sum(count_params(mods[layer["layer"]].branch) for g in ids if zero[g])
            continue
        if layer["kind"] not in PROFILES:
            continue
        gone = [g for g in ids if zero[g]]
        if len(gone) == len(ids):
            gone = gone[1:]
        chans = sum(len(gs.groups[g].channels) for g in gone)
        removed += sum(int(gs.numel[g]) for g in gone)
        for m in layer["modules"]:
            if isinstance(mods[m], (nn.Conv2d, nn.Linear)):
                r_out[m] = r_out.get(m, 0) + chans
        for c in layer["consumers"]:
            r_in[c] = r_in.get(c, 0) + chans
    for c, ri in r_in.items():
        m = mods[c]
        k = m.weight[0, 0].numel() if isinstance(m, nn.Conv2d) else 1
        groups = m.groups if isinstance(m, nn.Conv2d) else 1
        removed += ri * (_out_width(m) - r_out.get(c, 0)) * k // groups
    return count_params(model) - removed


def _check_surgery(name: str, kind: str, gs: GroupSet, model: nn.Module) -> None:
    x = example_input(name)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    extra = example_input(name, batch=3, seed=7)
    compact, plan = remove_zero_groups(model, gs, x, check_inputs=[extra])
    assert {n: p.shape for n, p in model.named_parameters()} == shapes  # reference left untouched
    assert plan.equivalence and all(r["ok"] for r in plan.equivalence) and len(plan.equivalence) == 4
    with torch.no_grad():
        torch.testing.assert_close(compact(extra), model(extra), atol=ATOL, rtol=RTOL)
    assert count_params(compact) == _predicted_params(model, gs)
    if kind == "channel_block":
        mods = dict(compact.named_modules())
        rows = {w["module"]: w for w in plan.widths}
        for layer in gs.summary():
            for m in layer["modules"]:
                if isinstance(mods[m], (nn.Conv2d, nn.Linear)):
                    assert _out_width(mods[m]) % 4 == 0, (m, _out_width(mods[m]))
                    assert rows[m]["block"] % 4 == 0 and rows[m]["after"] == _out_width(mods[m])
        assert all(w["aligned"] for w in plan.widths)


@pytest.mark.parametrize("kind", sorted(PROFILES))
@pytest.mark.parametrize("name", ALL)
def test_surgery_equivalence_and_predicted_params(name: str, kind: str) -> None:
    model = TINY_MODELS[name]()
    gs = build_groups(model, PROFILES[kind], example_input(name))
    state = copy.deepcopy(model.state_dict())
    for seed, frac in [(0, 0.3), (1, 0.7), (2, 1.0)]:
        model.load_state_dict(state)  # in place: gs keeps referencing the same tensors
        ids = _zero_random(gs, seed, frac)
        assert ids and count_params(model) > _predicted_params(model, gs) or frac == 1.0
        _check_surgery(name, kind, gs, model)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(PROFILES))
@pytest.mark.parametrize("name", ALL)
def test_surgery_seed_sweep(name: str, kind: str) -> None:
    model = TINY_MODELS[name](seed=3)
    gs = build_groups(model, PROFILES[kind], example_input(name))
    state = copy.deepcopy(model.state_dict())
    for seed in range(3, 8):
        for frac in (0.1, 0.5, 0.9):
            model.load_state_dict(state)
            _zero_random(gs, seed, frac)
            _check_surgery(name, kind, gs, model)


@pytest.mark.parametrize("kind", sorted(PROFILES))
def test_all_zero_set_keeps_one_group(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    model = TINY_MODELS["chain"]()
    gs = build_groups(model, PROFILES[kind], example_input("chain"))
    gs.zero_([g.id for g in gs.groups if g.root_module == "conv1"])
    with caplog.at_level(logging.WARNING, logger="hwprune.surgery.remove"):
        compact, plan = remove_zero_groups(model, gs, example_input("chain"))
    keep = 1 if kind == "channel" else 4
    assert compact.conv1.out_channels == keep and compact.bn1.num_features == keep
    assert compact.conv2.in_channels == keep and compact.conv2.out_channels == 16
    assert plan.removed_channels == 8 - keep and "conv1" in caplog.text
    assert {w["module"]: w["after"] for w in plan.widths}["conv1"] == keep


def test_concat_branches_keep_block_multiples() -> None:
    model = TINY_MODELS["concat"]()
    gs = build_groups(model, PROFILES["channel_block"], example_input("concat"))
    a = [g.id for g in gs.groups if g.root_module == "branch_a"]
    b = [g.id for g in gs.groups if g.root_module == "branch_b"]
    gs.zero_([a[0], b[1], b[3]])
    compact, plan = remove_zero_groups(model, gs, example_input("concat"))
    assert (compact.branch_a.out_channels, compact.branch_b.out_channels) == (4, 8)
    assert compact.bn.num_features == 12 and compact.mix[0].in_channels == 12
    rows = {w["module"]: w for w in plan.widths}
    assert rows["branch_b"]["block"] == 4 and rows["branch_b"]["aligned"]


@pytest.mark.parametrize("kind", ["kernel_shape", "unstructured"])
def test_mask_kinds_stay_masks(kind: str) -> None:
    model = TINY_MODELS["depthwise_grouped"]()
    gs = build_groups(model, prof([rule("Conv2d", kind)]), example_input("depthwise_grouped"))
    assert not bool(gs.removable.any())
    ids = _zero_random(gs, 0, 0.5)
    compact, plan = remove_zero_groups(model, gs, example_input("depthwise_grouped"))
    assert plan.steps == [] and plan.shapes_after == plan.shapes_before
    assert {n: p.shape for n, p in compact.named_parameters()} == {n: p.shape for n, p in model.named_parameters()}
    assert {m["kind"] for m in plan.masks} == {kind}
    assert sum(m["zero_groups"] for m in plan.masks) == len(ids)
    assert sum(m["groups"] for m in plan.masks) == gs.num_groups


def test_nm_groupset_is_not_removable() -> None:
    model = TINY_MODELS["mobilenet"]()
    gs = build_groups(model, prof([rule("Conv2d", "nm", n=2, m=4)]), example_input("mobilenet"), "nm")
    gs.zero_(list(range(0, gs.num_groups, 2)))
    with pytest.raises(ConfigError, match="structured"):
        remove_zero_groups(model, gs, example_input("mobilenet"))


def test_layer_group_turns_block_into_shortcut() -> None:
    model = TINY_MODELS["resnet"]()
    gs = build_groups(model, LAYER, example_input("resnet"))
    gs.zero_([g.id for g in gs.groups if g.root_module in ("layer1", "layer2")])
    compact, plan = remove_zero_groups(model, gs, example_input("resnet"))
    assert compact.layer1.branch is None and compact.layer2.branch is None and compact.layer3.branch is not None
    assert [s["op"] for s in plan.steps] == ["drop_branch", "drop_branch"]
    assert count_params(compact) == count_params(model) - count_params(model.layer1.branch) \
        - count_params(model.layer2.branch) == _predicted_params(model, gs)
    x = example_input("resnet", batch=2, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), atol=ATOL, rtol=RTOL)
    fresh = apply_plan(TINY_MODELS["resnet"](seed=4), json.loads(json.dumps(plan.to_dict())), example_input("resnet"))
    assert fresh.layer2.branch is None and fresh.layer3.branch is not None


@pytest.mark.parametrize("name", ["concat", "depthwise_grouped", "mobilenet", "resnet"])
def test_plan_json_round_trip_and_replay(name: str) -> None:
    model = TINY_MODELS[name]()
    gs = build_groups(model, PROFILES["channel"], example_input(name))
    _zero_random(gs, 5, 0.5)
    compact, plan = remove_zero_groups(model, gs, example_input(name))
    d = json.loads(json.dumps(plan.to_dict()))
    assert SurgeryPlan.from_dict(d).to_dict() == plan.to_dict()
    assert plan.removed_channels == sum(len(s["idxs"]) for s in d["steps"]) > 0
    fresh = TINY_MODELS[name](seed=11).train()
    apply_plan(fresh, d, example_input(name))
    assert fresh.training  # mode preserved
    assert {n: list(p.shape) for n, p in fresh.named_parameters()} == d["shapes_after"]
    fresh.load_state_dict(compact.state_dict(), strict=True)
    x = example_input(name, batch=2, seed=1)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), compact.eval()(x))


def test_tampered_plan_is_a_config_error() -> None:
    model = TINY_MODELS["chain"]()
    gs = build_groups(model, PROFILES["channel"], example_input("chain"))
    gs.zero_([0, 3, 9])
    _, plan = remove_zero_groups(model, gs, example_input("chain"))
    bad = plan.to_dict()
    bad["shapes_after"]["conv2.weight"] = [16, 8, 3, 3]
    with pytest.raises(ConfigError, match="conv2.weight"):
        apply_plan(TINY_MODELS["chain"](), bad, example_input("chain"))
    with pytest.raises(ConfigError, match="does not match this model"):
        apply_plan(TINY_MODELS["residual"](), plan.to_dict(), example_input("residual"))
    with pytest.raises(ConfigError, match="version"):
        SurgeryPlan.from_dict({**plan.to_dict(), "version": 99})


class _TwoHeads(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        y = self.body(x)
        return y, y * self.scale


def test_check_equivalence_lists_every_mismatch() -> None:
    ref = _TwoHeads(TINY_MODELS["chain"]())
    cand = copy.deepcopy(ref)
    inputs = [example_input("chain", batch=2, seed=s) for s in range(3)]
    assert len(check_equivalence(ref, cand, inputs)) == 6
    with torch.no_grad():
        cand.scale.fill_(1.01)
    with pytest.raises(SurgeryEquivalenceError, match="3 output") as err:
        check_equivalence(ref, cand, inputs)
    assert [(m["input"], m["output"]) for m in err.value.mismatches] == [(0, 1), (1, 1), (2, 1)]
    with torch.no_grad():
        cand.body.fc.bias.add_(0.1)
    with pytest.raises(SurgeryEquivalenceError, match="6 output") as err:
        check_equivalence(ref, cand, inputs)
    assert len(err.value.mismatches) == 6
    cand.body.fc = nn.Linear(16, 9)
    with pytest.raises(SurgeryEquivalenceError) as err:
        check_equivalence(ref, cand, inputs[:1])
    assert all("shape" in m for m in err.value.mismatches) and len(err.value.mismatches) == 2


def test_near_zero_groups_removed_with_tol_fail_the_check() -> None:
    model = TINY_MODELS["chain"]()
    gs = build_groups(model, PROFILES["channel"], example_input("chain"))
    with torch.no_grad():
        model.conv1.weight[2].mul_(1e-3)
        model.conv1.bias[2].mul_(1e-3)
        model.bn1.weight[2].mul_(1e-3)
        model.bn1.bias[2] = 5e-3  # positive: the channel passes the ReLU, so removing it shows
    remove_zero_groups(model, gs, example_input("chain"))  # tol 0: nothing removed, passes
    with pytest.raises(SurgeryEquivalenceError, match="output"):
        remove_zero_groups(model, gs, example_input("chain"), tol=1e-2, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("name,kw", [("resnet20", {"width": 0.5}), ("mobilenetv2", {"width": 0.25})])
def test_save_load_compact_registry_model(name: str, kw: dict, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model(name, num_classes=10, input_size=16, **kw).eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    gs = build_groups(model, load_profile("x86-avx2-ort"), x)
    _zero_random(gs, 0, 0.5)
    compact, plan = remove_zero_groups(model, gs, x)
    assert count_params(compact) == _predicted_params(model, gs) < count_params(model)
    save_model(compact, tmp_path / "pruned", input_shape=(3, 16, 16), plan=plan.to_dict())

    def no_pickle(*_a: object, **_k: object) -> None:
        raise AssertionError("load_model must not unpickle")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded, meta = load_model(tmp_path / "pruned")
    assert meta["plan"]["shapes_after"] == plan.shapes_after
    xb = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(xb), compact(xb), atol=0.0, rtol=0.0)


# Coverage meta-test: every granularity kind of a bundled profile has a groups test and a surgery
# (or N:M) test. Values: (module, test function) pairs that must exist.
COVERAGE: dict[str, dict[str, list[tuple[str, str]]]] = {
    "channel": {"groups": [("test_groups", "test_zeroed_groups_equal_pruned_model")],
                "surgery": [("test_surgery", "test_surgery_equivalence_and_predicted_params")]},
    "channel_block": {"groups": [("test_groups", "test_channel_block_alignment_with_concat")],
                      "surgery": [("test_surgery", "test_surgery_equivalence_and_predicted_params"),
                                  ("test_surgery", "test_concat_branches_keep_block_multiples")]},
    "kernel_shape": {"groups": [("test_groups", "test_kernel_shape_group_is_one_weight_column")],
                     "surgery": [("test_surgery", "test_mask_kinds_stay_masks")]},
    "unstructured": {"groups": [("test_groups", "test_groups_are_disjoint")],
                     "surgery": [("test_surgery", "test_mask_kinds_stay_masks")]},
    "layer": {"groups": [("test_groups", "test_layer_group_equals_dropped_branch")],
              "surgery": [("test_surgery", "test_layer_group_turns_block_into_shortcut")]},
    "head": {"groups": [("test_patterns", "test_head_groups_cover_qkv_rows_and_out_columns"),
                        ("test_patterns", "test_separate_qkv_heads_slice_every_projection")],
             "surgery": [("test_patterns", "test_pattern_masked_equals_compact_and_onnx"),
                         ("test_patterns", "test_compact_vit_saves_loads_and_replays_heads")]},
    "mlp_block": {"groups": [("test_patterns", "test_mlp_block_groups_the_hidden_width_in_blocks")],
                  "surgery": [("test_patterns", "test_pattern_masked_equals_compact_and_onnx")]},
    "nm": {"groups": [("test_groups", "test_nm_blocks_run_along_input_channels")],
           "surgery": [("test_surgery", "test_nm_groupset_is_not_removable"),
                       ("test_export", "test_check_nm_pattern_accepts_valid_2_4")]},
}


def _test_functions(module: str) -> set[str]:
    tree = ast.parse((TESTS_DIR / f"{module}.py").read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_profile_granularity_has_groups_and_surgery_tests() -> None:
    used = set()
    for name in list_profiles():
        p = load_profile(name)
        used |= {g.kind for r in p.rules for g in (r.granularity, r.fallback) if g is not None} - {"none"}
    assert used, "no bundled profiles found"
    missing = sorted(used - set(COVERAGE))
    assert not missing, f"granularity kinds without tests: {missing}"
    for kind in used:
        for role in ("groups", "surgery"):
            assert COVERAGE[kind][role], (kind, role)
            for module, fn in COVERAGE[kind][role]:
                assert fn in _test_functions(module), f"{kind}/{role}: {module}.{fn} does not exist"
