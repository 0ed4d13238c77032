"""Real-architecture patterns (tests/tiny_patterns.py): groups stay a partition, masked == compact, ONNX parity.

Also the transformer granularities (``head``, ``mlp_block``), the dense-with-a-reason rules (channel
shuffle, LayerNorm residual streams, unsupported attention modules) and the surgery replay of heads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups import GroupSet, build_groups
from hwprune.models import count_params_and_macs, create_model
from hwprune.models.attention import HeadPrunedMultiheadAttention, attention_spec, prune_heads
from hwprune.profiles import load_profile
from hwprune.runtime.export import export_and_validate
from hwprune.surgery.modelio import load_model, save_model
from hwprune.surgery.remove import apply_plan, remove_zero_groups
from tests.test_groups import _coverage_check, prof, rule
from tests.tiny_patterns import PATTERNS

PROFILES = ("generic-channel", "x86-avx2-ort")
ATOL, RTOL = 1e-5, 1e-4  # compact vs masked (the surgery contract); ONNX parity uses export's own


def _zero_half(gs: GroupSet, seed: int = 0) -> list[int]:
    """Zero half of the removable groups of every scope (rounded down, at least one where m_s > 1)."""
    gen = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for s in range(gs.num_scopes):
        members = torch.nonzero((gs.scope_index == s) & gs.removable).flatten()
        n = max(members.numel() // 2, 1) if members.numel() > 1 else 0
        ids += [int(i) for i in members[torch.randperm(members.numel(), generator=gen)[:n]]]
    gs.zero_(sorted(ids))
    return ids


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_pattern(name: str, model: nn.Module, compact: nn.Module, gs: GroupSet, profile: str) -> None:
    reasons = " | ".join(d["reason"] for d in gs.dense)
    if name == "shuffle":
        assert "reshape" in reasons  # the shuffle's sets stay dense, the branch internals are pruned
        if profile == "generic-channel":  # 8-wide branches hold a single block of 8 (kept) under x86-avx2-ort
            assert _params(compact.units) < _params(model.units)
    elif name == "layer_scale":
        assert "gamma" in gs.param_names and compact.gamma.shape[0] == compact.conv.out_channels < 16
    elif name == "tokens":
        assert {"cls", "pos"} <= set(gs.param_names)
        assert compact.cls.shape[-1] == compact.pos.shape[-1] == compact.conv_proj.out_channels < 16
    elif name == "mha":
        attn = compact.layers[0].self_attention
        assert isinstance(attn, HeadPrunedMultiheadAttention) and attn.num_heads < 4 and attn.embed_dim == 32
        assert "LayerNorm" in reasons
    elif name in ("qkv", "packed_qkv"):
        attn = compact.attn
        assert attn.num_heads < 4 and attn.head_dim == 8
        out = attn.out if name == "qkv" else attn.proj
        assert out.in_features == attn.num_heads * 8 and out.out_features == 32
    elif name == "convnext":
        assert "LayerNorm" in reasons
        assert compact.features[1][0].mlp[0].out_features < 32 and compact.features[1][0].gamma.shape[0] == 8


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_masked_equals_compact_and_onnx(name: str, profile: str, tmp_path: Path) -> None:
    model, x = PATTERNS[name]()
    gs = build_groups(model, load_profile(profile), x)
    assert _zero_half(gs), "nothing removable"
    compact, plan = remove_zero_groups(model, gs, x, atol=ATOL, rtol=RTOL)
    assert all(r["ok"] for r in plan.equivalence) and len(plan.equivalence) >= 3
    assert _params(compact) < _params(model)
    assert count_params_and_macs(compact, x)[1] < count_params_and_macs(model, x)[1]
    report = export_and_validate(compact, x, tmp_path / "compact.onnx")
    assert report.passed and report.exporter in ("torchscript", "dynamo")
    _check_pattern(name, model, compact, gs, profile)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_groups_partition_the_parameters(name: str) -> None:
    model, x = PATTERNS[name]()
    gs = build_groups(model, load_profile("generic-channel"), x)
    _coverage_check(model, gs)


def test_head_groups_cover_qkv_rows_and_out_columns() -> None:
    model, x = PATTERNS["mha"]()
    gs = build_groups(model, prof([rule("MultiheadAttention", "head")]), x)
    heads = [e for e in gs.entries if e.kind == "head"]
    assert [e.count for e in heads] == [4, 4] and gs.num_groups == 8
    name = heads[0].name
    assert {f"{name}.in_proj_weight", f"{name}.in_proj_bias", f"{name}.out_proj.weight"} <= set(gs.param_names)
    assert f"{name}.out_proj.bias" in gs.ungrouped
    attn = model.get_submodule(name)
    gs.zero_([heads[0].first + 2])  # head 2 of the first block
    w = attn.in_proj_weight.detach().view(3, 4, 8, 32)
    assert bool((w[:, 2] == 0).all()) and bool((w[:, [0, 1, 3]] != 0).any(dim=(2, 3)).all())
    assert bool((attn.out_proj.weight.detach().view(32, 4, 8)[:, 2] == 0).all())
    assert gs.origin(heads[0].first + 2) == (name, (2,))


def test_separate_qkv_heads_slice_every_projection() -> None:
    model, x = PATTERNS["qkv"]()
    gs = build_groups(model, prof([rule("re:attn", "head")]), x)
    assert {"attn.q.weight", "attn.k.bias", "attn.v.weight", "attn.out.weight"} <= set(gs.param_names)
    gs.zero_([1, 3])
    compact, plan = remove_zero_groups(model, gs, x)
    assert compact.attn.num_heads == 2 and compact.attn.q.out_features == 16 and compact.attn.out.in_features == 16
    assert [s for s in plan.steps if s["op"] == "prune_heads"] == [{"op": "prune_heads", "module": "attn",
                                                                     "heads": [1, 3]}]


def test_mlp_block_groups_the_hidden_width_in_blocks() -> None:
    model, x = PATTERNS["mha"]()
    p = prof([rule("re:.*mlp", "mlp_block", block=16, fallback={"kind": "channel"})])
    gs = build_groups(model, p, x)
    mlp = [e for e in gs.entries if e.granularity == "mlp_block(16)"]
    assert len(mlp) == 2 and all(e.count == 8 and all(len(c) == 16 for c in e.channels) for e in mlp)
    assert all(e.kind == "channel_block" and e.consumers == (e.name.rsplit(".", 1)[0] + ".2",) for e in mlp)
    # a Linear rule's own block combines with the container's by lcm
    gs2 = build_groups(model, prof([rule("re:.*mlp", "mlp_block", block=16), rule("Linear", "channel_block",
                                                                                  block=32)]), x)
    assert {len(c) for e in gs2.entries for c in e.channels or [] if e.kind == "channel_block"} == {32}
    with pytest.raises(ConfigError, match="not divisible by mlp_block 48"):
        build_groups(model, prof([rule("re:.*mlp", "mlp_block", block=48)]), x)


def test_layernorm_rule_is_refused_and_residual_stays_dense() -> None:
    model, x = PATTERNS["convnext"]()
    gs = build_groups(model, prof([rule("Conv2d", "channel"), rule("Linear", "channel")]), x)
    assert any("LayerNorm" in d["reason"] for d in gs.dense)
    with pytest.raises(ConfigError, match="normalises across them"):
        build_groups(model, prof([rule("LayerNorm2d", "channel"), rule("Conv2d", "channel")]), x)


def test_head_rule_on_unsupported_module_stays_dense_with_reason() -> None:
    model, x = PATTERNS["convnext"]()
    gs = build_groups(model, prof([rule("CNBlock", "head"), rule("Linear", "channel")]), x)
    reasons = [d["reason"] for d in gs.dense if "head rule" in d["reason"]]
    assert len(reasons) == 2 and "num_heads and head_dim" in reasons[0]
    assert gs.num_groups > 0  # the MLP widths are still grouped


def test_attention_spec_and_prune_heads_errors() -> None:
    assert isinstance(attention_spec(nn.MultiheadAttention(8, 2, add_bias_kv=True)), str)
    assert isinstance(attention_spec(nn.Linear(4, 4)), str)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with pytest.raises(ValueError, match="every head"):
        prune_heads(mha, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="out of range"):
        prune_heads(mha, [4])


@pytest.mark.parametrize("batch_first", [True, False])
def test_head_pruned_mha_matches_masked_mha_with_masks(batch_first: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_weight.view(3, 4, 4, 16)[:, 1] = 0
        mha.in_proj_bias.view(3, 4, 4)[:, 1] = 0
        mha.out_proj.weight.view(16, 4, 4)[:, :, 1] = 0
    small = prune_heads(mha, [1])
    assert isinstance(small, HeadPrunedMultiheadAttention) and small.num_heads == 3 and small.kept_heads == [0, 2, 3]
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    pad = torch.tensor([[False] * 6 + [True], [False] * 7])
    causal = torch.triu(torch.ones(5, 7, dtype=torch.bool), 1)
    with torch.no_grad():
        for kw in ({}, {"key_padding_mask": pad}, {"attn_mask": causal}):
            ref, _ = mha(q, kv, kv, need_weights=False, **kw)
            got, _ = small(q, kv, kv, need_weights=False, **kw)
            torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)
        ref, w_ref = mha(q, kv, kv, need_weights=True, average_attn_weights=False)
        got, w = small(q, kv, kv, need_weights=True, average_attn_weights=False)
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(w, w_ref[:, [0, 2, 3]], atol=ATOL, rtol=RTOL)


def test_compact_vit_saves_loads_and_replays_heads(tmp_path: Path) -> None:
    model = create_model("vit_tiny", input_size=16, dim=32, depth=2, heads=4).eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    gs = build_groups(model, load_profile("x86-avx2-ort"), x)
    _zero_half(gs)
    compact, plan = remove_zero_groups(model, gs, x)
    assert any(s["op"] == "prune_heads" for s in plan.steps) and any(s["op"] == "prune_out" for s in plan.steps)
    fresh = create_model("vit_tiny", input_size=16, dim=32, depth=2, heads=4)
    replayed = apply_plan(fresh, plan.to_dict(), x)
    assert {n: list(p.shape) for n, p in replayed.named_parameters()} == plan.shapes_after
    save_model(compact, tmp_path / "pruned", input_shape=(3, 16, 16), plan=plan.to_dict())
    loaded, _ = load_model(tmp_path / "pruned")
    xb = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(xb), compact.eval()(xb), atol=0.0, rtol=0.0)


def test_torch_pruning_failure_is_one_line_naming_the_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_pruning as tp

    model, x = PATTERNS["layer_scale"]()
    gs = build_groups(model, load_profile("generic-channel"), x)
    _zero_half(gs)

    def broken(self: object, *args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(tp.dependency.group.Group, "prune", broken)
    with pytest.raises(ConfigError, match=r"torch-pruning failed to remove \d+ channels of layer '[\w.]+'") as info:
        remove_zero_groups(model, gs, x)
    assert "\n" not in str(info.value) and "ZeroDivisionError" in str(info.value)


def test_torch_pruning_failure_while_grouping_keeps_that_set_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    from hwprune.groups import graph

    model, x = PATTERNS["layer_scale"]()
    real = graph._CheckedGraph.get_pruning_group

    def flaky(self: object, module: nn.Module, *args: object) -> object:
        if module is model.last[0]:
            raise IndexError("list index out of range")
        return real(self, module, *args)

    monkeypatch.setattr(graph._CheckedGraph, "get_pruning_group", flaky)
    gs = build_groups(model, load_profile("generic-channel"), x)
    assert any(d["layer"] == "last.0" and "IndexError" in d["reason"] for d in gs.dense)
    assert gs.num_groups > 0


def test_plan_with_unknown_step_is_refused() -> None:
    model, x = PATTERNS["qkv"]()
    with pytest.raises(ConfigError, match="unknown steps \\['prune_rows'\\]"):
        apply_plan(model, {"version": 1, "steps": [{"op": "prune_rows", "module": "attn"}]}, x)
