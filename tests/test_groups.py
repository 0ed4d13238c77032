"""Tests for hwprune.groups: coupled, disjoint groups and their vectorised operations."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch_pruning as tp
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups import GroupSet, build_groups
from hwprune.profiles import profile_from_dict
from tests.tiny_models import TINY_MODELS, example_input

ATOL = 1e-5  # zeroed-groups model vs torch-pruning-pruned copy (float32)
RTOL = 1e-4
REF_TOL = 1e-9  # vectorised float64 reductions vs the slow per-group reference

ALL = sorted(TINY_MODELS)


def prof(rules: list[dict], **kw) -> object:
    d = {"name": "t", "schema_version": 1, "description": "", "device": {"kind": "cpu", "vendor": "x", "arch": "x"},
         "rules": rules}
    d.update(kw)
    return profile_from_dict(d)


def rule(match: str, kind: str, optional: bool = True, fallback: dict | None = None, **params) -> dict:
    r = {"match": match, "granularity": {"kind": kind, **params}, "optional": optional}
    if fallback is not None:
        r["fallback"] = fallback
    return r


CHANNEL = prof([rule("Conv2d", "channel"), rule("Linear", "channel")])
BLOCK4 = prof([rule("Conv2d", "channel_block", block=4), rule("Linear", "channel_block", block=4)])


def build(name: str, profile, phase: str = "structured", **kw) -> tuple[nn.Module, GroupSet]:
    model = TINY_MODELS[name]()
    return model, build_groups(model, profile, example_input(name), phase, **kw)


def _coverage_check(model: nn.Module, gs: GroupSet) -> None:
    """Sum of group sq-norms == squares of exactly the elements that zero_(all) touches (no overlap)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p).abs() + 0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    total = gs.sq_norms().sum()
    gs.zero_(torch.arange(gs.num_groups))
    changed = {n: (p.detach() == 0) for n, p in model.named_parameters()}
    covered = sum(float((before[n][changed[n]].double() ** 2).sum()) for n in before)
    assert math.isclose(float(total), covered, rel_tol=1e-9)
    assert int(gs.numel.sum()) == sum(int(c.sum()) for c in changed.values())
    assert set(gs.param_names) | set(gs.ungrouped) == set(before)
    assert not set(gs.param_names) & set(gs.ungrouped)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kind", ["channel", "kernel_shape", "unstructured"])
def test_groups_are_disjoint(name: str, kind: str) -> None:
    model, gs = build(name, prof([rule("Conv2d", kind), rule("Linear", kind)]))
    assert gs.num_groups > 0
    _coverage_check(model, gs)


def test_layer_and_nm_groups_are_disjoint() -> None:
    model, gs = build("resnet", prof([rule("TinyBlock", "layer")]))
    assert gs.num_groups == 3 and set(gs.scope_names) == {"layers"}
    _coverage_check(model, gs)
    model, gs = build("mobilenet", prof([rule("Conv2d", "nm", n=2, m=4)]), phase="nm")
    _coverage_check(model, gs)


def _prune_reference(model: nn.Module, gs: GroupSet, zero_ids: list[int], x: torch.Tensor) -> nn.Module:
    ref = copy.deepcopy(model)
    dg = tp.DependencyGraph().build_dependency(ref, example_inputs=x, verbose=False)
    mods = dict(ref.named_modules())
    by_root: dict[str, list[int]] = {}
    for g in zero_ids:
        root, chans = gs.origin(g)
        by_root.setdefault(root, []).extend(chans)
    for root, chans in by_root.items():
        m = mods[root]
        dg.get_pruning_group(m, dg.get_pruner_of_module(m).prune_out_channels, sorted(chans)).prune()
    return ref.eval()


def _random_removable(gs: GroupSet, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    ids = []
    for s in range(gs.num_scopes):
        members = torch.nonzero(gs.scope_index == s).flatten()
        n = len(members)
        drop = members[torch.randperm(n, generator=gen)[: max(n // 2, 1) if n > 1 else 0]]
        ids.extend(int(i) for i in drop if gs.removable[i])
    return sorted(ids)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("profile", [CHANNEL, BLOCK4], ids=["channel", "block4"])
def test_zeroed_groups_equal_pruned_model(name: str, profile) -> None:
    model, gs = build(name, profile)
    x = example_input(name, batch=2, seed=3)
    ids = _random_removable(gs, seed=1)
    assert ids, "nothing to prune"
    gs.zero_(ids)
    ref = _prune_reference(model, gs, ids, example_input(name))
    assert sum(p.numel() for p in ref.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=ATOL, rtol=RTOL)


def test_removable_groups_hold_bn_and_residual_partners() -> None:
    model, gs = build("residual", CHANNEL)
    info = next(g for g in gs.groups if g.root_module == "conv_b.0")
    assert {"conv_b.0", "conv_b.1", "down.0", "down.1"} <= set(info.modules)
    assert {"down.1.weight", "down.1.bias", "conv_b.1.weight", "conv_b.1.bias"} <= set(gs.param_names)
    c = info.channels[0]
    gs.zero_([info.id])
    for n in ("conv_b.1", "down.1"):
        bn = dict(model.named_modules())[n]
        assert bn.weight[c] == 0 and bn.bias[c] == 0 and bn.weight.count_nonzero() == 15
    assert dict(model.named_modules())["conv_a.0"].weight[:, c].count_nonzero() > 0  # consumer columns untouched
    assert "fc.weight" in gs.ungrouped  # classifier logits are coupled to the output


def test_channel_block_alignment_with_concat() -> None:
    model, gs = build("concat", prof([rule("Conv2d", "channel_block", block=8)]))
    for e in gs.summary():
        assert e["granularity"] == "channel_block(8)"
    ids = [g.id for g in gs.groups if g.root_module == "branch_b"][:1]
    gs.zero_(ids)
    ref = _prune_reference(model, gs, ids, example_input("concat"))
    assert ref.branch_a.out_channels % 8 == 0 and ref.branch_b.out_channels % 8 == 0 and ref.bn.num_features == 16


def test_grouped_conv_units_take_one_channel_per_conv_group() -> None:
    _, gs = build("depthwise_grouped", CHANNEL)
    stem = [g.channels for g in gs.groups if g.root_module == "stem.0"]
    assert stem == [(j, j + 4, j + 8, j + 12) for j in range(4)]


def test_layer_group_equals_dropped_branch() -> None:
    model, gs = build("resnet", prof([rule("TinyBlock", "layer"), rule("Conv2d", "channel")]))
    assert [g.root_module for g in gs.groups if g.kind == "layer"] == ["layer1", "layer2", "layer3"]
    assert any(d["reason"] == "touches a layer-grouped residual branch" for d in gs.dense)
    gs.zero_([g.id for g in gs.groups if g.root_module == "layer2"])
    ref = copy.deepcopy(model)
    ref.layer2.branch = None
    x = example_input("resnet", batch=2, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=ATOL, rtol=RTOL)


def test_layer_rule_on_plain_module_is_an_error() -> None:
    with pytest.raises(ConfigError, match="conv1"):
        build("chain", prof([rule("conv1", "layer")]))


def test_kernel_shape_group_is_one_weight_column() -> None:
    model, gs = build("chain", prof([rule("conv2", "kernel_shape")]))
    assert gs.num_groups == 8 * 9 and not bool(gs.removable.any())
    g = next(g for g in gs.groups if g.channels == (3, 1, 2))
    gs.zero_([g.id])
    w = model.conv2.weight
    assert bool((w[:, 3, 1, 2] == 0).all()) and int((w == 0).sum()) == 16


def test_nm_blocks_run_along_input_channels() -> None:
    model, gs = build("chain", prof([rule("Conv2d", "nm", n=2, m=4), rule("Linear", "none")]), phase="nm")
    assert [d["layer"] for d in gs.dense] == ["conv1"]  # 3 input channels: dense (warning)
    w = model.conv2.weight  # (16, 8, 3, 3): blocks of 4 inputs at fixed (k, r, s)
    assert gs.num_groups == w.numel() and gs.num_scopes == w.numel() // 4
    assert bool((gs.scope_sizes == 4).all()) and bool((gs.scope_k == 2).all())
    ids = gs.to_padded(torch.arange(gs.num_groups))
    for row in ids[[0, 5, 77]].tolist():
        coords = [gs.origin(i)[1] for i in row]
        assert len({(k, rs) for k, _, rs in coords}) == 1
        c = [c for _, c, _ in coords]
        assert c == list(range(c[0], c[0] + 4)) and c[0] % 4 == 0
    torch.testing.assert_close(gs.norms(), w.detach().permute(0, 2, 3, 1).reshape(-1).abs().double()
                               .view(16, 9, 2, 4).permute(0, 2, 1, 3).reshape(-1), atol=0, rtol=0)


def test_weights_mean_one_per_scope() -> None:
    for mode in ("size", "flops"):
        for scope in ("per_layer", "global"):
            _, gs = build("concat", prof([rule("Conv2d", "channel")], weight_mode=mode, scope=scope))
            means = torch.zeros(gs.num_scopes, dtype=torch.float64).index_add_(0, gs.scope_index, gs.weights)
            torch.testing.assert_close(means / gs.scope_sizes, torch.ones(gs.num_scopes, dtype=torch.float64))
    assert float(gs.weights.std()) > 0.1  # global flops weights differ between layers


def test_flops_weights_larger_for_early_high_res_layers() -> None:
    _, gs = build("residual", prof([rule("Conv2d", "channel")], weight_mode="flops", scope="global"))
    d = {g.root_module: g.weight for g in gs.groups}
    assert d["stem.0"] > d["conv_a.0"]


def test_latency_weights_need_a_table() -> None:
    p = prof([rule("Conv2d", "channel")], weight_mode="latency")
    with pytest.raises(ConfigError, match="latency_table"):
        build("chain", p)
    _, gs = build("chain", p, latency_table={"conv1": 2.0, "conv2": [float(i + 1) for i in range(16)]})
    d2 = gs.weights[gs.scope_index == gs.scope_names.index("conv2")]
    torch.testing.assert_close(d2, torch.arange(1, 17, dtype=torch.float64) / 8.5)


def test_block_not_dividing_width_raises_or_uses_fallback() -> None:
    with pytest.raises(ConfigError, match=r"conv1.*8 coupled output channels.*channel_block 16"):
        build("chain", prof([rule("Conv2d", "channel_block", block=16)]))
    fb = prof([rule("Conv2d", "channel_block", block=16, fallback={"kind": "channel"})])
    _, gs = build("chain", fb)
    rows = {r["layer"]: r for r in gs.summary()}
    assert rows["conv1"]["groups"] == 8 and "fallback" in rows["conv1"]["note"] and rows["conv2"]["groups"] == 1
    _, gs = build("chain", prof([rule("Conv2d", "channel_block", block=16)]), allow_remainder=True)
    assert {r["layer"]: r["groups"] for r in gs.summary()}["conv1"] == 1


def test_unmatched_rule_and_none_rule() -> None:
    with pytest.raises(ConfigError, match="Conv1d"):
        build("chain", prof([rule("Conv1d", "channel", optional=False)]))
    _, gs = build("residual", prof([rule("down.1", "none"), rule("Conv2d", "channel")]))
    assert "conv_b.0" not in {g.root_module for g in gs.groups}


def _membership(model: nn.Module, gs: GroupSet, g: int) -> dict[str, torch.Tensor]:
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    gs.zero_([g])
    mask = {n: p.detach() == 0 for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(saved[n])
    return mask


@pytest.mark.parametrize("name", ["mobilenet", "concat"])
def test_vectorised_ops_match_slow_reference(name: str) -> None:
    model, gs = build(name, CHANNEL)
    params = dict(model.named_parameters())
    other = {n: torch.randn_like(p) for n, p in params.items()}
    masks = [_membership(model, gs, g) for g in range(gs.num_groups)]
    ref_sq = torch.tensor([sum(float((params[n].detach()[m[n]].double() ** 2).sum()) for n in m) for m in masks],
                          dtype=torch.float64)
    ref_dot = torch.tensor([sum(float((params[n].detach()[m[n]].double() * other[n][m[n]]).sum()) for n in m)
                            for m in masks], dtype=torch.float64)
    torch.testing.assert_close(gs.sq_norms(), ref_sq.double(), atol=REF_TOL, rtol=REF_TOL)
    torch.testing.assert_close(gs.dot(other), ref_dot.double(), atol=REF_TOL, rtol=REF_TOL)
    factors = torch.rand(gs.num_groups, dtype=torch.float64)
    expect = {n: p.detach().clone() for n, p in params.items()}
    for g, m in enumerate(masks):
        for n in m:
            expect[n][m[n]] *= float(factors[g])
    gs.scale_(factors)
    for n, p in params.items():
        torch.testing.assert_close(p.detach(), expect[n], atol=1e-6, rtol=1e-6)


def test_hand_built_reference_on_chain() -> None:
    model, gs = build("chain", CHANNEL)
    for g in gs.groups:
        if g.root_module != "conv1":
            continue
        (c,) = g.channels
        parts = [model.conv1.weight[c], model.conv1.bias[c], model.bn1.weight[c], model.bn1.bias[c]]
        ref = sum(float((t.detach().double() ** 2).sum()) for t in parts)
        assert math.isclose(float(gs.sq_norms()[g.id]), ref, rel_tol=1e-12)
        assert g.numel == 27 + 3


def test_padding_rows_and_k() -> None:
    model, gs = build("concat", CHANNEL)
    v = torch.rand(gs.num_groups, dtype=torch.float64)
    pad = gs.to_padded(v, fill=-1.0)
    assert pad.shape == (gs.num_scopes, int(gs.scope_sizes.max()))
    assert int((pad == -1.0).sum()) == pad.numel() - gs.num_groups
    torch.testing.assert_close(gs.from_padded(pad), v, atol=0, rtol=0)
    sizes = gs.scope_sizes.tolist()
    assert gs.k_for_sparsity(0.5).tolist() == [math.ceil(s / 2) for s in sizes]
    assert gs.k_for_sparsity(0.999).tolist() == [1] * len(sizes)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        gs.k_for_sparsity(1.0)  # the one sparsity interval of hwprune.base.checks
    assert gs.k_for_sparsity(0.0).tolist() == sizes
    s = gs.scope_names.index("branch_a")
    rows = gs.rows(s)
    sel = gs.scope_index == s
    torch.testing.assert_close(rows.double().norm(dim=1), gs.norms()[sel], atol=1e-6, rtol=1e-6)
    before = gs.norms()
    gs.write_rows_(s, rows * 2)
    after = gs.norms()
    torch.testing.assert_close(after[sel], 2 * before[sel], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(after[~sel], before[~sel], atol=0, rtol=0)


def test_k_rounding_and_json() -> None:
    _, gs = build("mlp", prof([rule("Linear", "channel")]))
    assert gs.k_for_sparsity(0.75).tolist() == [8, 6]  # fc1 32, fc2 24
    data = json.loads(json.dumps(gs.to_json()))
    assert data["num_groups"] == 56 and data["groups"][0]["root_module"] == "fc1"
    assert data["dense"] == [{"layer": "fc3", "reason": "coupled to the model output"}]
    assert gs.nonzero_per_scope().tolist() == [32, 24]


def test_cli_groups_table_and_json() -> None:
    from click.testing import CliRunner

    from hwprune.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["groups", "--profile", "generic-channel", "--model", "lenet5", "--input-size", "28",
                              "--in-channels", "1"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].split()[:3] == ["layer", "granularity", "groups"]
    res = runner.invoke(cli, ["groups", "--profile", "generic-channel", "--model", "nope"])
    assert res.exit_code == 2 and "Error:" in res.output
    res = runner.invoke(cli, ["groups", "--profile", "generic-channel", "--model", "lenet5", "--input-size", "28",
                              "--in-channels", "1", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["phase"] == "structured"
