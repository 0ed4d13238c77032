"""Latency weights and latency budgets on top of a ``LatencyTable`` (METHOD.md 6.3-6.4).

Model of a pruned network's latency: the sum over conv/linear layers of ``table.cost(layer,
kept output width)`` times the kept fraction of its input channels (a linear approximation for a
consumer whose input set shrinks; a depthwise conv follows its set through its own curve), scaled
by ``dense_ms / predicted dense`` when a measured dense latency is given (calibration for what the
per-layer sum misses). Which groups a scope loses: in decreasing weight ``d_i``, ties spread evenly
over the scope's layers, so only the kept channel counts matter; a layer sharing a scope with
others keeps at least one group (surgery never empties a layer). Only removable ``channel`` /
``channel_block`` groups are modelled; other scopes (masks, ``layer`` groups) keep all groups.

* ``latency_group_costs(gs, table)`` -> ``{entry name: ms saved by removing one group at full
  width}``: the ``latency_table`` argument of ``build_groups`` for ``weight_mode="latency"``.
* ``choose_k_for_budget(gs, table, budget_ms, staircase=blocks)`` -> k per scope (greedy; see its
  docstring). With a calibrated staircase (``CalibrationInfo.blocks``) the prediction costs every width
  like the next multiple of its kind's block (``StepLatencyTable``), the greedy looks ahead a whole
  block, and a final pass raises each scope to the top of its step where that costs no predicted
  latency: a width just above a step is never kept, it either drops to the step or fills it.
* ``run_with_budget(cfg, run_dir, budget, opts)``: table -> k -> the pipeline with those k -> measure
  -> one budget correction if the measurement misses by more than ``BUDGET_TOL``; writes
  ``RUN_DIR/latency_budget.json``. It sits at the pipeline level (imports it lazily).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from hwprune.base.errors import ConfigError
from hwprune.groups import GroupSet
from hwprune.runtime.latency import LatencyTable, TimeFn

if TYPE_CHECKING:
    from hwprune.pipeline.steps import PipelineOptions
    from hwprune.training.config import TrainJobConfig

__all__ = ["LatencyPredictor", "latency_group_costs", "choose_k_for_budget", "fill_steps", "parse_budget",
           "run_with_budget", "MIN_WEIGHT_FRAC", "LOOKAHEAD", "BUDGET_TOL"]

MIN_WEIGHT_FRAC = 1e-3  # latency weights are floored at this fraction of the largest one (groups need d > 0)
LOOKAHEAD = 4  # greedy looks up to this many removals ahead in a scope (flat steps of a staircase curve)
BUDGET_TOL = 0.05  # relative miss of the measured latency that triggers the one budget correction
_CHANNEL_KINDS = ("channel", "channel_block")


@dataclass
class _Ent:
    """One modelled entry: its group sizes (channels), total channels, producer and consumer layers."""

    name: str
    total: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]


class LatencyPredictor:
    """Predicted latency (ms) of ``gs``'s model with ``k`` groups kept per scope (see module docstring)."""

    def __init__(self, gs: GroupSet, table: LatencyTable, *, dense_ms: float | None = None) -> None:
        self.gs, self.table = gs, table
        self.layers = list(table.layers)
        lidx = {n: i for i, n in enumerate(self.layers)}
        self.full_out = np.array([table.layers[n].spec.out_channels for n in self.layers], float)
        self.ents: list[_Ent] = []
        self.out_ent = np.full(len(self.layers), -1)
        self.in_ents: list[list[int]] = [[] for _ in self.layers]
        w = gs.weights.tolist()
        scope_of = gs.scope_index.tolist()
        per_scope: dict[int, list[tuple[float, float, int, int]]] = {}
        for e in gs.entries:
            if not (e.removable and e.kind in _CHANNEL_KINDS and e.channels):
                continue
            j = len(self.ents)
            sizes = [len(c) for c in e.channels]
            prods = tuple(m for m in e.modules if m in lidx)
            cons = tuple(m for m in e.consumers if m in lidx and not table.layers[m].spec.depthwise)
            self.ents.append(_Ent(e.name, sum(sizes), prods, cons))
            for m in prods:
                self.out_ent[lidx[m]] = j
            for m in cons:
                self.in_ents[lidx[m]].append(j)
            for i, size in enumerate(sizes[:-1] if gs.scope_sizes[scope_of[e.first]] > e.count else sizes):
                g = e.first + i  # a layer sharing its scope keeps >= 1 group (as surgery does)
                per_scope.setdefault(scope_of[g], []).append((-round(w[g], 9), (i + 0.5) / e.count, j, size))
        # removed[s]: (m_s + 1, n_ents) channels removed per entry after the first r removals of scope s
        self.removed: dict[int, np.ndarray] = {}
        self.scope_layers: dict[int, np.ndarray] = {}
        for s, items in per_scope.items():
            items.sort()
            mat = np.zeros((len(items) + 1, len(self.ents)))
            for r, (_, _, j, size) in enumerate(items, start=1):
                mat[r] = mat[r - 1]
                mat[r, j] += size
            self.removed[s] = mat
            touched = {j for _, _, j, _ in items}
            self.scope_layers[s] = np.array([i for i in range(len(self.layers)) if self.out_ent[i] in touched
                                             or any(j in touched for j in self.in_ents[i])], dtype=int)
        self.scopes = sorted(self.removed)
        self.sizes = gs.scope_sizes.clone()
        raw_dense = float(self._layer_costs(self._removed_of(self.sizes)).sum())
        self.scale = float(dense_ms) / raw_dense if dense_ms is not None and raw_dense > 0 else 1.0

    def _removed_of(self, k: Tensor) -> np.ndarray:
        rem = np.zeros(len(self.ents))
        for s in self.scopes:
            mat = self.removed[s]
            rem += mat[min(int(self.sizes[s] - k[s]), len(mat) - 1)]
        return rem

    def _layer_costs(self, removed: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        idx = np.arange(len(self.layers)) if idx is None else idx
        totals = np.array([e.total for e in self.ents], float)
        out = np.empty(len(idx))
        for o, i in enumerate(idx):
            j = self.out_ent[i]
            width = self.full_out[i] if j < 0 else self.full_out[i] * (1.0 - removed[j] / totals[j])
            name = self.layers[i]
            fracs = [self.table.input_fraction(name, float(totals[c] - removed[c]), float(totals[c]))
                     for c in self.in_ents[i]]
            frac = float(np.prod(np.asarray(fracs, dtype=np.float64))) if fracs else 1.0
            out[o] = self.table.cost(name, max(width, 1.0)) * frac
        return out

    def predict(self, k: Tensor) -> float:
        """Predicted latency (ms) with ``k`` (S,) groups kept per scope."""
        return self.scale * float(self._layer_costs(self._removed_of(k)).sum())

    def widths(self, k: Tensor) -> dict[str, float]:
        """Predicted output width of every table layer with ``k`` kept per scope."""
        rem = self._removed_of(k)
        out = {}
        for i, n in enumerate(self.layers):
            j = self.out_ent[i]
            out[n] = float(self.full_out[i] if j < 0 else self.full_out[i] * (1 - rem[j] / self.ents[j].total))
        return out


def latency_group_costs(gs: GroupSet, table: LatencyTable) -> dict[str, float]:
    """Entry (root layer) name -> ms saved by removing one group at full width, for ``build_groups``.

    Channel sets: the drop of every producer's cost (one block narrower) plus each consumer's cost
    times block / total. ``layer`` groups: the cost of the block's branch layers. Other entries
    (masks) save nothing. Values are floored at ``MIN_WEIGHT_FRAC`` times the largest (d must be > 0).
    """
    pred = LatencyPredictor(gs, table)
    costs: dict[str, float] = {}
    by_name = {e.name: e for e in pred.ents}
    for e in gs.entries:
        if e.name in by_name and e.channels:
            ent = by_name[e.name]
            block = max(len(c) for c in e.channels)
            saved = 0.0
            for m in ent.producers:
                full = table.layers[m].spec.out_channels
                width = full * (1 - block / ent.total)
                saved += table.cost(m, full) - table.cost(m, max(width, 1.0))
            saved += sum(table.cost(m, table.layers[m].spec.out_channels) * block / ent.total for m in ent.consumers)
            costs[e.name] = saved
        elif e.kind == "layer":
            prefixes = tuple(f"{m}.branch." for m in e.modules)
            costs[e.name] = sum(table.cost(n, c.spec.out_channels) for n, c in table.layers.items()
                                if n.startswith(prefixes))
        else:
            costs[e.name] = 0.0
    top = max(costs.values(), default=0.0)
    floor = MIN_WEIGHT_FRAC * top if top > 0 else 1.0
    return {n: max(v, floor) for n, v in costs.items()}


def _staircase_lookahead(gs: GroupSet, blocks: Mapping[str, int]) -> int:
    """Removals needed to cross one step: the largest block over the smallest channel group (>= LOOKAHEAD)."""
    sizes = [len(c) for e in gs.entries if e.removable and e.channels for c in e.channels]
    return max(LOOKAHEAD, math.ceil(max(blocks.values(), default=1) / max(min(sizes, default=1), 1)))


def fill_steps(pred: LatencyPredictor, k: Tensor, lookahead: int) -> Tensor:
    """Raise each scope's k (by up to ``lookahead`` groups) as far as the predicted latency does not grow.

    With a staircase prediction this keeps the channels that cost nothing (the rest of the current step).
    Scopes are visited in order; returns a new (S,) tensor.
    """
    k = k.clone()
    total = pred.predict(k)
    for s in pred.scopes:
        best = 0
        for j in range(1, lookahead + 1):
            if int(k[s]) + j > int(pred.sizes[s]):
                break
            trial = k.clone()
            trial[s] += j
            if pred.predict(trial) <= total * (1 + 1e-12):
                best = j
        k[s] += best
    return k


def choose_k_for_budget(gs: GroupSet, table: LatencyTable, budget_ms: float, *, dense_ms: float | None = None,
                        importance: Sequence[float] | Tensor | None = None,
                        staircase: Mapping[str, int] | None = None) -> Tensor:
    """Groups kept per scope, (S,) long, so that the predicted latency is <= ``budget_ms``.

    Greedy: start dense; repeatedly take, over modelled scopes and ``j = 1..LOOKAHEAD`` removals,
    the step with the largest predicted ms saved per importance lost, where removing the next group
    of a scope with ``k`` kept costs ``importance[s] / k`` (default importance 1: thin layers are
    protected); ties go to the lower scope index. Never fewer than 1 group per scope.

    Args:
        gs: structured GroupSet of the dense model.
        table: the model's ``LatencyTable``.
        budget_ms: target latency in ms (same units as ``dense_ms`` when given, else as the table sum).
        dense_ms: measured dense latency; predictions are calibrated to it.
        importance: optional per-scope multipliers (S,) > 0.
        staircase: calibrated block per layer kind (``conv``, ``depthwise``, ``linear``, ``attention_mlp``);
            see the module docstring. None: the table's interpolated curves as measured.

    Raises:
        ConfigError: a non-positive budget, or one that cannot be met with 1 group per scope.

    Long (~60 lines) because the greedy search, its tie-breaking and the staircase check read as one loop.
    """
    if not budget_ms > 0:
        raise ConfigError(f"latency budget must be > 0 ms, got {budget_ms}")
    lookahead = LOOKAHEAD
    if staircase:
        from hwprune.runtime.steptable import StepLatencyTable

        table = StepLatencyTable.from_table(table, staircase)
        lookahead = _staircase_lookahead(gs, staircase)
    pred = LatencyPredictor(gs, table, dense_ms=dense_ms)
    imp = torch.ones(gs.num_scopes, dtype=torch.float64) if importance is None else \
        torch.as_tensor(importance, dtype=torch.float64)
    if imp.shape != (gs.num_scopes,) or bool((imp <= 0).any()):
        raise ConfigError(f"importance must have shape ({gs.num_scopes},) and be > 0")
    k = gs.scope_sizes.clone()
    rem = pred._removed_of(k)
    costs = pred._layer_costs(rem)
    total = pred.scale * float(costs.sum())
    while total > budget_ms:
        best: tuple[float, int, int, np.ndarray, np.ndarray] | None = None
        for s in pred.scopes:
            idx = pred.scope_layers[s]
            r0 = int(pred.sizes[s] - k[s])
            lost = 0.0
            for j in range(1, min(lookahead, int(k[s]) - 1) + 1):
                lost += float(imp[s]) / float(k[s] - j + 1)
                mat = pred.removed[s]
                rem_j = rem - mat[min(r0, len(mat) - 1)] + mat[min(r0 + j, len(mat) - 1)]
                new = pred._layer_costs(rem_j, idx)
                saved = pred.scale * float(costs[idx].sum() - new.sum())
                if saved > 0 and (best is None or saved / lost > best[0] + 1e-12):
                    best = (saved / lost, s, j, rem_j, new)
        if best is None:
            raise ConfigError(f"latency budget {budget_ms:.4g} ms is unreachable: the prediction with 1 group per "
                              f"scope is {total:.4g} ms (dense {pred.predict(gs.scope_sizes):.4g} ms)")
        _, s, j, rem, new = best
        k[s] -= j
        costs[pred.scope_layers[s]] = new
        total = pred.scale * float(costs.sum())
    return fill_steps(pred, k, lookahead) if staircase else k


_BUDGET_RE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(x|ms)?\s*")


def parse_budget(text: str | float, dense_ms: float | None = None) -> tuple[float, float | None]:
    """``"12.5"`` / ``"12.5ms"`` -> (12.5, None); ``"0.6x"`` -> (0.6 * dense_ms, 0.6).

    Returns ``(budget_ms, fraction_or_None)``; a fraction needs ``dense_ms`` and must be in (0, 1].
    """
    m = _BUDGET_RE.fullmatch(str(text))
    if m is None:
        raise ConfigError(f"--latency-budget: expected milliseconds such as 12.5 or a fraction of the dense "
                          f"latency such as 0.6x, got '{text}'")
    value = float(m.group(1))
    if m.group(2) == "x":
        if not 0 < value <= 1:
            raise ConfigError(f"--latency-budget: a fraction must be in (0, 1], got {value}x")
        if dense_ms is None:
            raise ConfigError("--latency-budget: a fraction needs the measured dense latency")
        return value * float(dense_ms), value
    if value <= 0:
        raise ConfigError(f"--latency-budget: must be > 0 ms, got {value}")
    return value, None


def _measured(run_dir: Path, spec: Any) -> tuple[float, float]:
    """(dense, pruned) median ms at batch 1: from ``bench.json`` when it has batch 1, else timed now."""
    from hwprune.runtime.bench import compare

    path = run_dir / "bench.json"
    rows = json.loads(path.read_text()).get("speedup", []) if path.is_file() else []
    row = next((r for r in rows if r.get("batch") == 1), None)
    if row is None:
        row = compare(run_dir / "dense.onnx", run_dir / "model.onnx", spec, batch_size=1)["speedup"][0]
    return float(row["dense_median_ms"]), float(row["pruned_median_ms"])


def run_with_budget(cfg: TrainJobConfig, run_dir: Path, budget: str | float, opts: PipelineOptions | None = None, *,
                    cache_path: Path | None = None, max_points: int = 8, time_fn: TimeFn | None = None,
                    progress: bool | None = None, run_fn: Callable[..., Any] | None = None,
                    tolerance: float = BUDGET_TOL) -> dict[str, Any]:
    """Prune ``cfg``'s model to a latency budget (ms such as ``"12.5"`` or a dense fraction ``"0.6x"``).

    (a) latency table of the dense model (cached), dense model timed at batch 1; (b) k per scope by
    ``choose_k_for_budget``; (c) ``hwprune.pipeline.steps.run`` (or ``run_fn``, same signature) with
    ``k_override=k`` (and the latency group costs when the profile's weight_mode is ``latency``);
    (d) measured vs predicted at batch 1; if the miss exceeds ``tolerance`` the prediction target is
    scaled by predicted/measured once and the pipeline re-run (re-using the dense model). Writes
    ``RUN_DIR/latency_table.{json,csv}`` and ``RUN_DIR/latency_budget.json``; returns the latter.

    Long and with ten parameters because it is the budget pipeline in one place: the options are the train job's
    and the latency table's, passed through.
    """
    from hwprune.base.files import atomic_write_json
    from hwprune.groups import build_groups
    from hwprune.pipeline.steps import PipelineOptions, bench_spec_for, run
    from hwprune.runtime.bench import measure
    from hwprune.runtime.export import to_onnx
    from hwprune.runtime.latency import build_latency_table, default_cache_path, table_bench_spec
    from hwprune.training.job import data_and_model, resolve_profile

    opts = opts or PipelineOptions()
    run_fn = run_fn or run
    run_dir = Path(run_dir)
    parse_budget(budget, dense_ms=1.0)  # syntax first: nothing is built or written for a malformed budget
    profile = resolve_profile(cfg.profile)
    _, model, example = data_and_model(cfg)
    spec, note = bench_spec_for(profile, opts)
    run_dir.mkdir(parents=True, exist_ok=True)
    table = build_latency_table(model, profile, example, bench=table_bench_spec(spec, 1), max_points=max_points,
                                cache_path=cache_path or default_cache_path(), time_fn=time_fn)
    table.save(run_dir)
    spec1 = dataclasses.replace(spec, batch_sizes=(1,))
    to_onnx(model, example, run_dir / "latency_dense.onnx")
    dense_ms = float(measure(run_dir / "latency_dense.onnx", spec1, batch_size=1)[0].median_ms)
    budget_ms, frac = parse_budget(budget, dense_ms)
    gs = build_groups(model, dataclasses.replace(profile, weight_mode="uniform"), example)
    costs = latency_group_costs(gs, table) if profile.weight_mode == "latency" else None
    if profile.weight_mode != "uniform":  # the weights decide which layers a shared scope loses first
        gs = build_groups(model, profile, example, latency_table=costs)
    stair = dict(profile.calibration.blocks) if profile.calibration is not None else None
    if stair:
        from hwprune.runtime.steptable import StepLatencyTable

        pred = LatencyPredictor(gs, StepLatencyTable.from_table(table, stair), dense_ms=dense_ms)
    else:
        pred = LatencyPredictor(gs, table, dense_ms=dense_ms)
    target = budget_ms
    iterations: list[dict[str, Any]] = []
    for it in range(2):
        k = choose_k_for_budget(gs, table, target, dense_ms=dense_ms, staircase=stair)
        predicted = pred.predict(k)
        it_cfg = cfg if it == 0 else cfg.replace(checkpoint=str(run_dir / "dense"))
        run_fn(it_cfg, run_dir, opts=opts, progress=progress, k_override=k, latency_table=costs)
        dense_now, pruned_now = _measured(run_dir, spec1)
        # a fraction budget is judged against the dense model timed alongside (CPU timings drift)
        measured = pruned_now * dense_ms / dense_now if frac is not None else pruned_now
        iterations.append({"target_ms": target, "predicted_ms": predicted, "measured_ms": measured,
                           "measured_raw_ms": pruned_now, "dense_measured_ms": dense_now,
                           "k": [int(v) for v in k]})
        if abs(measured / budget_ms - 1.0) <= tolerance or it == 1:
            break
        target = budget_ms * predicted / measured
    last = iterations[-1]
    result = {"budget": str(budget), "budget_ms": budget_ms, "fraction": frac, "dense_ms": dense_ms,
              "predicted_ms": last["predicted_ms"], "measured_ms": last["measured_ms"],
              "miss": last["measured_ms"] / budget_ms - 1.0, "met": last["measured_ms"] <= budget_ms * (1 + tolerance),
              "iterations": iterations, "k_per_scope": dict(zip(gs.scope_names, last["k"], strict=True)),
              "weight_mode": profile.weight_mode, "calibration_scale": pred.scale, "bench_note": note,
              "staircase": stair, "predicted_widths": pred.widths(torch.as_tensor(last["k"])),
              "table": {"layers": len(table.layers), **{k: v for k, v in table.meta.items() if k != "machine"}}}
    atomic_write_json(run_dir / "latency_budget.json", result)
    if run_fn is run:  # rebuild report.json so that it includes latency_budget.json
        from hwprune.pipeline.steps import step_report

        old = run_dir / "report.json"
        seconds = json.loads(old.read_text()).get("timings", {}) if old.is_file() else {}
        step_report(run_dir, step_seconds=seconds)
    return result
