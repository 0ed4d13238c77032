"""Dependency-graph surgery: remove all-zero structured groups and prove the function is unchanged.

``remove_zero_groups`` turns a model whose removable groups are exactly zero (after training, or
``GroupSet.zero_``) into a smaller dense model:

* channel / channel-block groups: every zero group of a coupled set is removed through
  torch-pruning (``DependencyGraph.get_pruning_group(root, prune_out_channels, idxs).prune()``), which
  also removes the dependent slices (consumers' input columns, BN entries, residual partners, concat
  offsets). A coupled set is never emptied: if all its groups are zero, the first is kept.
* layer groups: a zero residual branch is dropped (``block.branch = None``: the block becomes its
  shortcut).
* head groups: zero heads are removed from their attention module after the channel surgery
  (``hwprune.models.attention.prune_heads``: ``nn.MultiheadAttention`` becomes a
  ``HeadPrunedMultiheadAttention`` with fewer heads; q/k/v/out ``Linear`` modules are sliced and
  ``num_heads`` updated). An attention module keeps at least one head.
* kernel-shape, unstructured and N:M groups stay as masks (zeros); ``SurgeryPlan.masks`` records them.

Every call checks equivalence (masked vs compact model on random and given inputs, ``ATOL``/``RTOL``)
and raises ``SurgeryEquivalenceError`` listing every mismatching output.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from hwprune.base.errors import ConfigError, HwpruneError, NumericalMismatchError
from hwprune.groups.graph import build_graph
from hwprune.groups.groupset import GroupSet
from hwprune.models.attention import prune_heads

__all__ = [
    "ATOL",
    "RTOL",
    "SurgeryPlan",
    "SurgeryEquivalenceError",
    "remove_zero_groups",
    "apply_plan",
    "check_equivalence",
    "layer_widths",
]

log = logging.getLogger(__name__)

ATOL = 1e-5  # absolute tolerance of the masked-vs-compact equivalence check (float32)
RTOL = 1e-4  # relative tolerance of the same check
PLAN_VERSION = 1
CHANNEL_KINDS = ("channel", "channel_block")  # GroupInfo.kind of removable channel groups
HEAD_KIND = "head"
LAYER_KIND = "layer"
_STEP_OPS = ("drop_branch", "prune_out", "prune_heads")  # replayed in this order


class SurgeryEquivalenceError(NumericalMismatchError):
    """The compact model does not compute the masked model's function within ATOL/RTOL."""


@dataclass
class SurgeryPlan:
    """JSON-serialisable record of a surgery; ``apply_plan`` replays it on a fresh model.

    ``steps``: ordered ``{"op": "drop_branch", "module"}``, ``{"op": "prune_out", "module", "idxs"}``,
    ``{"op": "prune_heads", "module", "heads"}`` (replayed in that order).
    ``shapes_before`` / ``shapes_after``: parameter name -> shape. ``widths``: per layer
    ``{"module", "before", "after", "block", "aligned"}``. ``masks``: mask kinds left in place.
    """

    steps: list[dict[str, Any]] = field(default_factory=list)
    shapes_before: dict[str, list[int]] = field(default_factory=dict)
    shapes_after: dict[str, list[int]] = field(default_factory=dict)
    widths: list[dict[str, Any]] = field(default_factory=list)
    masks: list[dict[str, Any]] = field(default_factory=list)
    equivalence: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SurgeryPlan:
        """Inverse of ``to_dict``; rejects unknown plan versions."""
        if d.get("version") != PLAN_VERSION:
            raise ConfigError(f"surgery plan version {d.get('version')!r} is not supported (expected {PLAN_VERSION})")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def removed_channels(self) -> int:
        """Number of root channels removed by ``prune_out`` steps."""
        return sum(len(s["idxs"]) for s in self.steps if s["op"] == "prune_out")


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {n: list(p.shape) for n, p in model.named_parameters()}


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = model(x)
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    return [o for o in out if isinstance(o, torch.Tensor)]


@torch.no_grad()
def check_equivalence(
    reference: nn.Module,
    candidate: nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> list[dict[str, Any]]:
    """Compare outputs of two models (eval mode) on every input; raise listing all mismatches.

    Returns one record per (input, output): ``{input, output, shape, max_abs, max_rel, ok}``.
    """
    was = reference.training, candidate.training
    reference.eval()
    candidate.eval()
    records: list[dict[str, Any]] = []
    try:
        for i, x in enumerate(inputs):
            ref, cand = _outputs(reference, x), _outputs(candidate, x)
            if len(ref) != len(cand):
                records.append({"input": i, "output": -1, "ok": False, "error": "different number of outputs"})
                continue
            for j, (a, b) in enumerate(zip(ref, cand, strict=True)):
                if a.shape != b.shape:
                    records.append({"input": i, "output": j, "ok": False, "shape": [list(a.shape), list(b.shape)]})
                    continue
                diff = (a - b).abs()
                max_abs = float(diff.max()) if diff.numel() else 0.0
                max_rel = float((diff / a.abs().clamp_min(1e-12)).max()) if diff.numel() else 0.0
                ok = bool(torch.allclose(b, a, atol=atol, rtol=rtol))
                records.append({"input": i, "output": j, "shape": list(a.shape), "max_abs": max_abs,
                                "max_rel": max_rel, "ok": ok})
    finally:
        reference.train(was[0])
        candidate.train(was[1])
    bad = [r for r in records if not r["ok"]]
    if bad:
        def what(r: dict[str, Any]) -> str:
            if "max_abs" in r:
                return f"max_abs={r['max_abs']:.3g} max_rel={r['max_rel']:.3g}"
            return str(r.get("shape") or r.get("error"))

        lines = "; ".join(f"input {r['input']} output {r['output']}: {what(r)}" for r in bad)
        raise SurgeryEquivalenceError(
            f"compact model differs from the masked model (atol={atol}, rtol={rtol}) in {len(bad)} output(s): {lines}",
            bad,
        )
    return records


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Conv/Linear layer (``out_channels`` / ``out_features``)."""
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


def _prune_out(dg: Any, model: nn.Module, module_name: str, idxs: list[int]) -> None:
    module = model.get_submodule(module_name)
    pruner = dg.get_pruner_of_module(module)
    if pruner is None:
        raise ConfigError(f"surgery: torch-pruning has no pruner for layer '{module_name}' ({type(module).__name__})")
    try:
        dg.get_pruning_group(module, pruner.prune_out_channels, sorted(idxs)).prune()
    except HwpruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised in the user's terms
        raise ConfigError(f"surgery: torch-pruning failed to remove {len(idxs)} channels of layer '{module_name}' "
                          f"of {type(model).__name__} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                          "keep it dense with a 'none' rule") from exc


def _prune_heads(model: nn.Module, module_name: str, heads: list[int]) -> None:
    try:
        new = prune_heads(model.get_submodule(module_name), heads)
    except ValueError as exc:
        raise ConfigError(f"surgery: cannot remove heads {heads} of '{module_name}': {exc}") from exc
    model.set_submodule(module_name, new)


def _never_empty(by_module: dict[str, list[tuple[list[int], bool]]], what: str) -> dict[str, list[int]]:
    """Indices of the zero groups per module, keeping the first group of a module whose groups are all zero."""
    remove: dict[str, list[int]] = {}
    for name, entries in by_module.items():
        zero = [e for e in entries if e[1]]
        if not zero:
            continue
        if len(zero) == len(entries):  # never empty a layer: keep the first group (zeros)
            log.warning("surgery: every %s group of '%s' is zero; keeping one so the layer is not emptied", what, name)
            zero = zero[1:]
        idxs = sorted(c for e in zero for c in e[0])
        if idxs:
            remove[name] = idxs
    return remove


@dataclass
class _ZeroPlan:
    channels: dict[str, list[int]]  # root module -> channels to remove
    heads: dict[str, list[int]]  # attention module -> heads to remove
    branches: list[str]
    masks: list[dict[str, Any]]


def _zero_plan(groupset: GroupSet, tol: float) -> _ZeroPlan:
    """Channels and heads to remove per module, branches to drop, and mask records."""
    zero = ~groupset.nonzero(tol)
    by_root: dict[str, list[tuple[list[int], bool]]] = {}
    by_attn: dict[str, list[tuple[list[int], bool]]] = {}
    branches: list[str] = []
    masks: dict[str, dict[str, Any]] = {}
    for info in groupset.groups:
        is_zero = bool(zero[info.id])
        if info.kind in CHANNEL_KINDS:
            by_root.setdefault(info.root_module, []).append((list(info.channels), is_zero))
        elif info.kind == HEAD_KIND:
            by_attn.setdefault(info.root_module, []).append((list(info.channels), is_zero))
        elif info.kind == LAYER_KIND:
            if is_zero:
                branches.append(info.root_module)
        else:
            rec = masks.setdefault(info.root_module, {"module": info.root_module, "kind": info.kind, "zero_groups": 0,
                                                      "groups": 0})
            rec["groups"] += 1
            rec["zero_groups"] += int(is_zero)
    return _ZeroPlan(_never_empty(by_root, "channel"), _never_empty(by_attn, "head"), branches, list(masks.values()))


def _versions() -> dict[str, str]:
    import hwprune

    return {"hwprune": hwprune.__version__, "torch": torch.__version__,
            "torch_pruning": getattr(tp, "__version__", "?")}


def _width_report(before: dict[str, int], after: dict[str, int], blocks: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for name, w0 in before.items():
        w1 = after.get(name, w0)
        b = blocks.get(name, 1)
        rows.append({"module": name, "before": w0, "after": w1, "block": b, "aligned": w1 % b == 0})
    return rows


def remove_zero_groups(
    model: nn.Module,
    groupset: GroupSet,
    example_inputs: torch.Tensor,
    *,
    tol: float = 0.0,
    check_inputs: Sequence[torch.Tensor] = (),
    atol: float = ATOL,
    rtol: float = RTOL,
    n_random: int = 2,
    seed: int = 0,
) -> tuple[nn.Module, SurgeryPlan]:
    """Physically remove every all-zero removable group; returns ``(compact_model, plan)``.

    ``model`` is left untouched (it is the masked reference of the equivalence check). ``tol`` is the
    group-norm threshold for "zero" (default exact zeros). Equivalence is checked on ``n_random``
    random batches shaped like ``example_inputs`` (batch 4) plus ``check_inputs``. (Nine
    parameters: the six keyword-only ones are the equivalence check's, kept here so that one call
    both prunes and proves it.)

    Raises:
        ConfigError: a group cannot be removed (torch-pruning failed on a layer; named).
        SurgeryEquivalenceError: the compact model differs from the masked one (every output listed).
    """
    if groupset.phase != "structured":
        raise ConfigError(f"surgery works on structured groups, got a GroupSet of phase '{groupset.phase}'")
    zp = _zero_plan(groupset, tol)
    blocks: dict[str, int] = {}  # first (full) block of each set, for every producer of the set
    for g in groupset.groups:
        if g.kind == "channel_block":
            for name in g.modules:
                blocks.setdefault(name, len(g.channels))
    compact = copy.deepcopy(model)
    plan = SurgeryPlan(shapes_before=_shapes(model), masks=zp.masks, versions=_versions())
    before = layer_widths(model)
    for name in zp.branches:
        _drop_branch(compact, name)
        plan.steps.append({"op": "drop_branch", "module": name})
    if zp.channels:
        dg = build_graph(compact, example_inputs)
        for root, idxs in zp.channels.items():
            _prune_out(dg, compact, root, idxs)
            plan.steps.append({"op": "prune_out", "module": root, "idxs": idxs})
    for name, heads in zp.heads.items():
        _prune_heads(compact, name, heads)
        plan.steps.append({"op": "prune_heads", "module": name, "heads": heads})
    plan.shapes_after = _shapes(compact)
    plan.widths = _width_report(before, layer_widths(compact), blocks)
    gen = torch.Generator().manual_seed(seed)
    shape = (4, *example_inputs.shape[1:])
    inputs = [torch.randn(shape, generator=gen) for _ in range(n_random)] + [example_inputs, *check_inputs]
    plan.equivalence = check_equivalence(model, compact, inputs, atol=atol, rtol=rtol)
    compact.train(model.training)
    return compact, plan


def _drop_branch(model: nn.Module, name: str) -> None:
    block = model.get_submodule(name)
    if not hasattr(block, "branch"):
        raise ConfigError(f"surgery: layer group '{name}' is not a residual block (no 'branch' attribute)")
    setattr(block, "branch", None)  # noqa: B010 - block protocol attribute


def apply_plan(fresh_model: nn.Module, plan: SurgeryPlan | dict[str, Any], example_inputs: torch.Tensor) -> nn.Module:
    """Replay ``plan`` on a freshly created model of the same architecture (in place; returned).

    Raises ``ConfigError`` if the resulting parameter shapes differ from ``plan.shapes_after``.
    """
    if isinstance(plan, dict):
        plan = SurgeryPlan.from_dict(plan)
    got = _shapes(fresh_model)
    if plan.shapes_before and got != plan.shapes_before:
        diff = [n for n in set(got) | set(plan.shapes_before) if got.get(n) != plan.shapes_before.get(n)]
        raise ConfigError(f"surgery plan does not match this model: parameter shapes differ for {sorted(diff)[:5]}")
    unknown = sorted({str(s.get("op")) for s in plan.steps} - set(_STEP_OPS))
    if unknown:
        raise ConfigError(f"surgery plan has unknown steps {unknown}; valid: {', '.join(_STEP_OPS)}")
    for step in plan.steps:
        if step["op"] == "drop_branch":
            _drop_branch(fresh_model, step["module"])
    prune_steps = [s for s in plan.steps if s["op"] == "prune_out"]
    if prune_steps:
        was_training = fresh_model.training
        dg = build_graph(fresh_model, example_inputs)  # torch-pruning's tracing switches to eval mode
        for step in prune_steps:
            _prune_out(dg, fresh_model, step["module"], list(step["idxs"]))
        fresh_model.train(was_training)
    for step in plan.steps:
        if step["op"] == "prune_heads":
            _prune_heads(fresh_model, step["module"], list(step["heads"]))
    after = _shapes(fresh_model)
    if plan.shapes_after and after != plan.shapes_after:
        diff = [n for n in set(after) | set(plan.shapes_after) if after.get(n) != plan.shapes_after.get(n)]
        raise ConfigError(f"replaying the surgery plan gave different shapes for {sorted(diff)[:5]}")
    return fresh_model
