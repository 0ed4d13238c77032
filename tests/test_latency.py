"""Latency tables (cache, interpolation, marginal), latency weights and budget -> k selection."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups import build_groups
from hwprune.pipeline.budget import (
    LatencyPredictor,
    choose_k_for_budget,
    latency_group_costs,
    parse_budget,
)
from hwprune.profiles import BenchSpec, load_profile
from hwprune.runtime.latency import LatencyTable, LayerCurve, LayerSpec, build_latency_table, width_grid

FP = {"cpu_model": "fake-cpu", "cores": 2, "ort": "1.0"}
BENCH = BenchSpec(batch_sizes=(1,), iters=5, warmup=1, repeats=1)


class TwoConv(nn.Module):
    """conv1 (1->16) -> conv2 (16->16) -> fc (16->10); block-8 profile: two scopes of 2 groups."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def fake_time(calls: list[LayerSpec]):
    """conv1 (in 1): out/8 ms; conv2 (in 16): 3*out/8 ms; linear: 0.5 ms."""
    def fn(spec: LayerSpec, bench: BenchSpec, batch: int) -> float:
        calls.append(spec)
        if spec.kind == "linear":
            return 0.5
        return spec.out_channels / 8 * (1.0 if spec.in_channels == 1 else 3.0)
    return fn


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    model = TwoConv()
    profile = load_profile("x86-avx2-ort")  # channel_block 8, per_layer scopes
    return model, profile, torch.randn(1, 1, 8, 8)


def test_table_records_shapes_and_grid(setup):
    model, profile, x = setup
    calls: list[LayerSpec] = []
    table = build_latency_table(model, profile, x, bench=BENCH, time_fn=fake_time(calls), fingerprint=FP)
    assert list(table.layers) == ["conv1", "conv2", "fc"]
    assert table.layers["conv2"].spec.input_shape == (16, 8, 8)
    assert table.layers["fc"].spec.input_shape == (16,)
    assert table.layers["conv1"].widths == (8, 16) and table.layers["fc"].widths == (10,)
    assert table.cost("conv2", 12) == pytest.approx(4.5)  # halfway between 3 and 6
    assert table.total() == pytest.approx(2 + 6 + 0.5)
    assert width_grid(64, 8, 4) == (8, 24, 48, 64)
    assert width_grid(20, 8) == (8, 16, 20)


def test_cache_reuse_and_invalidation(setup, tmp_path: Path):
    model, profile, x = setup
    cache = tmp_path / "cache.json"
    calls: list[LayerSpec] = []
    kw = dict(bench=BENCH, cache_path=cache, time_fn=fake_time(calls))
    build_latency_table(model, profile, x, fingerprint=FP, **kw)
    assert len(calls) == 5 and cache.is_file()
    t2 = build_latency_table(model, profile, x, fingerprint=FP, **kw)
    assert len(calls) == 5 and t2.meta["cache_hits"] == 5 and t2.meta["cache_misses"] == 0
    # every key part invalidates: machine fingerprint, threads, batch, layer input shape
    build_latency_table(model, profile, x, fingerprint={**FP, "ort": "2.0"}, **kw)
    assert len(calls) == 10
    build_latency_table(model, profile, x, fingerprint=FP, **{**kw, "bench": dataclasses.replace(BENCH, threads=1)})
    assert len(calls) == 15
    build_latency_table(model, profile, x, fingerprint=FP, batch=4, **kw)
    assert len(calls) == 20
    build_latency_table(model, profile, torch.randn(1, 1, 6, 6), fingerprint=FP, **kw)
    assert len(calls) == 24  # the convs see a new input shape; fc's (16,) input is unchanged: a hit
    build_latency_table(model, profile, x, fingerprint=FP, **kw)  # all of the above are still cached
    assert len(calls) == 24
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 24


def test_table_json_csv_roundtrip(setup):
    model, profile, x = setup
    table = build_latency_table(model, profile, x, bench=BENCH, time_fn=fake_time([]), fingerprint=FP)
    back = LatencyTable.from_json(json.loads(json.dumps(table.to_json())))
    assert back.layers == table.layers and back.meta == table.meta
    rows = table.to_csv().strip().splitlines()
    assert rows[0] == "layer,kind,in_channels,full_width,width,ms" and len(rows) == 1 + 5
    assert rows[1].startswith("conv1,conv,1,16,8,")


def test_marginal_on_staircase():
    spec = LayerSpec("conv", 16, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, (16, 8, 8))
    table = LatencyTable({"c": LayerCurve("c", spec, (8, 16, 24, 32), (1.0, 1.0, 2.0, 2.0))})
    assert table.marginal("c", 32, 8) == pytest.approx(0.0)
    assert table.marginal("c", 24, 8) == pytest.approx(1.0)
    assert table.marginal("c", 16, 8) == pytest.approx(0.0)
    assert table.cost("c", 20) == pytest.approx(1.5)
    assert table.marginal("c", 24, 4) == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        table.marginal("c", 8, 8)


def test_depthwise_width_shrinks_input():
    spec = LayerSpec("conv", 32, 32, (3, 3), (1, 1), (1, 1), (1, 1), 32, False, (32, 8, 8))
    narrow = spec.at_width(8)
    assert (narrow.in_channels, narrow.groups, narrow.input_shape) == (8, 8, (8, 8, 8))
    assert isinstance(narrow.build(), nn.Conv2d)


def test_latency_weights_normalised(setup):
    model, profile, x = setup
    table = build_latency_table(model, profile, x, bench=BENCH, time_fn=fake_time([]), fingerprint=FP)
    gs = build_groups(model, profile, x)
    costs = latency_group_costs(gs, table)
    # conv1 group: conv1 2->1 ms saved, conv2 input 6 * 8/16 = 3 -> 4; conv2 group: 3 + fc 0.5 * 8/16 -> 3.25
    assert costs == pytest.approx({"conv1": 4.0, "conv2": 3.25})
    glob = dataclasses.replace(profile, weight_mode="latency", scope="global")
    gw = build_groups(model, glob, x, latency_table=costs)
    assert gw.num_scopes == 1 and float(gw.weights.mean()) == pytest.approx(1.0)
    by = {g.root_module: g.weight for g in gw.groups}
    assert by["conv1"] / by["conv2"] == pytest.approx(4.0 / 3.25)
    per_layer = build_groups(model, dataclasses.replace(profile, weight_mode="latency"), x, latency_table=costs)
    assert torch.allclose(per_layer.weights, torch.ones(4, dtype=torch.float64))


def test_budget_exact_k(setup):
    model, profile, x = setup
    table = build_latency_table(model, profile, x, bench=BENCH, time_fn=fake_time([]), fingerprint=FP)
    gs = build_groups(model, profile, x)
    assert gs.scope_names == ("conv1", "conv2")
    pred = LatencyPredictor(gs, table)
    assert pred.predict(torch.tensor([2, 2])) == pytest.approx(8.5)
    assert pred.predict(torch.tensor([1, 2])) == pytest.approx(1 + 3 + 0.5)
    assert pred.predict(torch.tensor([2, 1])) == pytest.approx(2 + 3 + 0.25)
    assert choose_k_for_budget(gs, table, 9.0).tolist() == [2, 2]
    # dropping a conv1 block saves 4 ms (score 4 / (1/2)) vs 3.25 ms for conv2: conv1 goes first
    assert choose_k_for_budget(gs, table, 5.0).tolist() == [1, 2]
    assert choose_k_for_budget(gs, table, 3.0).tolist() == [1, 1]
    # calibration: measured dense 17 ms = 2 x the table sum, so a 10 ms budget is 5 table-ms
    assert choose_k_for_budget(gs, table, 10.0, dense_ms=17.0).tolist() == [1, 2]
    # importance protects conv1: 4 / (3/2) < 3.25 / (1/2)
    assert choose_k_for_budget(gs, table, 5.3, importance=[3.0, 1.0]).tolist() == [2, 1]
    with pytest.raises(ConfigError, match="unreachable"):
        choose_k_for_budget(gs, table, 2.0)


def test_budget_on_global_scope_follows_weights(setup):
    model, profile, x = setup
    table = build_latency_table(model, profile, x, bench=BENCH, time_fn=fake_time([]), fingerprint=FP)
    base = build_groups(model, dataclasses.replace(profile, scope="global"), x)
    costs = latency_group_costs(base, table)
    gs = build_groups(model, dataclasses.replace(profile, scope="global", weight_mode="latency"), x,
                      latency_table=costs)
    pred = LatencyPredictor(gs, table)
    # heaviest d first: the first removed group is conv1's
    assert pred.widths(torch.tensor([3]))["conv1"] == pytest.approx(8)
    assert pred.widths(torch.tensor([3]))["conv2"] == pytest.approx(16)
    k = choose_k_for_budget(gs, table, 4.6)
    assert k.tolist() == [3]


def test_parse_budget():
    assert parse_budget("12.5") == (12.5, None)
    assert parse_budget("3ms") == (3.0, None)
    assert parse_budget("0.6x", dense_ms=10.0) == (pytest.approx(6.0), 0.6)
    for bad in ("fast", "1.5x", "0", "-3"):
        with pytest.raises(ConfigError):
            parse_budget(bad, dense_ms=10.0)
    with pytest.raises(ConfigError):
        parse_budget("0.5x")


@pytest.mark.slow
def test_predicted_vs_measured_real_ort(tmp_path: Path):
    """Real ORT timings: the calibrated prediction of a half-width model is within 2x of its measurement."""
    from hwprune.runtime.bench import measure
    from hwprune.runtime.export import to_onnx

    def net(w: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(w, 64, 3, padding=1)).eval()

    profile = load_profile("x86-avx2-ort")
    bench = BenchSpec(batch_sizes=(1,), iters=30, warmup=5, repeats=3, threads=1)
    x = torch.randn(1, 3, 32, 32)
    dense = net(128)
    table = build_latency_table(dense, profile, x, bench=bench, max_points=3, cache_path=tmp_path / "c.json")
    to_onnx(dense, x, tmp_path / "dense.onnx")
    to_onnx(net(32), x, tmp_path / "small.onnx")
    dense_ms = measure(tmp_path / "dense.onnx", bench, batch_size=1)[0].median_ms
    small_ms = measure(tmp_path / "small.onnx", bench, batch_size=1)[0].median_ms
    gs = build_groups(dense, profile, x)
    pred = LatencyPredictor(gs, table, dense_ms=dense_ms)
    k = torch.tensor([4 if n != "4" else int(gs.scope_sizes[i]) for i, n in enumerate(gs.scope_names)])
    predicted = pred.predict(k)
    assert 0.5 < predicted / small_ms < 2.0, (predicted, small_ms, dense_ms)
    assert small_ms < dense_ms


# ----------------------------------------------------------------------------- latency-true widths (staircase)
class Wide(nn.Module):
    """conv1 (1->32) -> conv2 (32->32) -> fc; generic-channel profile: 31 single-channel groups per conv scope."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3)))


def test_staircase_budget_keeps_widths_on_steps():
    from hwprune.pipeline.budget import fill_steps
    from hwprune.runtime.steptable import StepLatencyTable, kept_vs_staircase, layer_kind

    torch.manual_seed(0)
    model, x = Wide(), torch.randn(1, 1, 8, 8)
    profile = load_profile("generic-channel")

    def stairs(spec: LayerSpec, bench: BenchSpec, batch: int) -> float:  # latency steps every 8 channels
        return 0.5 if spec.kind == "linear" else 0.1 * -(-spec.out_channels // 8) * (3.0 if spec.in_channels > 1 else 1)

    table = build_latency_table(model, profile, x, bench=BENCH, widths=list(range(1, 33)), time_fn=stairs,
                                fingerprint=FP)
    gs = build_groups(model, profile, x)
    blocks = {"conv": 8, "linear": 8}
    dense = LatencyPredictor(gs, table).predict(gs.scope_sizes)
    for frac in (0.8, 0.6, 0.45):
        k = choose_k_for_budget(gs, table, frac * dense, staircase=blocks)
        pred = LatencyPredictor(gs, StepLatencyTable.from_table(table, blocks))
        assert pred.predict(k) <= frac * dense * (1 + 1e-9)
        widths = pred.widths(k)
        # kept widths sit on steps: multiples of 8 (or full width); the interpolating table does not ensure it
        assert all(widths[n] % 8 == 0 for n in ("conv1", "conv2")), (frac, widths)
        assert torch.equal(fill_steps(pred, k, 16), k)  # nothing left to fill for free
    step = StepLatencyTable.from_table(table, blocks)
    assert step.cost("conv1", 9) == step.cost("conv1", 16) and step.block("conv1") == 8
    assert layer_kind(table.layers["fc"].spec) == "linear" and layer_kind(table.layers["conv1"].spec) == "conv"
    rows = kept_vs_staircase(model, [{"module": "conv1", "before": 32, "after": 20},
                                     {"module": "conv2", "before": 32, "after": 24}], blocks)
    assert [(r["step_width"], r["on_step"], r["idle_channels"]) for r in rows] == [(24, False, 4), (24, True, 0)]


def test_fill_steps_raises_k_to_the_top_of_a_step(setup):
    from hwprune.pipeline.budget import fill_steps
    from hwprune.runtime.steptable import StepLatencyTable

    model, profile, x = setup
    gp = load_profile("generic-channel")
    table = build_latency_table(model, gp, x, bench=BENCH, widths=list(range(1, 17)),
                                time_fn=lambda s, b, n: 0.5 if s.kind == "linear" else 0.1 * -(-s.out_channels // 8),
                                fingerprint=FP)
    gs = build_groups(model, gp, x)
    pred = LatencyPredictor(gs, StepLatencyTable.from_table(table, {"conv": 8}))
    k = torch.tensor([9, 16])  # conv1 keeps 9 channels: it costs like 16
    assert fill_steps(pred, k, 16).tolist() == [16, 16]
    assert fill_steps(pred, torch.tensor([8, 16]), 16).tolist() == [8, 16]  # on a step: unchanged


def test_report_renders_kept_widths_against_the_staircase():
    from hwprune.report.render import render_markdown

    base = {"schema_version": 1, "profile": "cal", "model": "m", "data": "d", "method": "wgsef",
            "sparsity_target": 0.5, "scopes": [], "accuracy": {"dense": 1, "pruned": 1},
            "params": {"dense": 2, "pruned": 1}, "macs": {"dense": 2, "pruned": 1},
            "latency": {"dense": [], "pruned": []}, "environment": {}, "versions": {}, "timings": {}}
    sw = {"blocks": {"conv": 16}, "backend": "onnxruntime", "threads": 1, "batch": 1,
          "layers": [{"module": "c1", "kind": "conv", "before": 64, "after": 33, "block": 16, "step_width": 48,
                      "on_step": False, "idle_channels": 15}]}
    md = render_markdown({**base, "staircase_widths": sw})
    assert "## Kept widths vs the measured staircase" in md and "| c1 | conv | 64 | 33 | 16 | 48 | NO |" in md
    assert "1 of 1 layers kept a width off a step" in md
    assert "staircase" not in render_markdown(base)
