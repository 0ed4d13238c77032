"""Typed records of a run's JSON artifacts (what crosses from one step to the next through the RunDir).

Each record is a frozen dataclass with ``to_dict()`` (the JSON written) and ``from_dict()`` (the
reader; a missing key is a ``DataError`` naming it). Accuracies are top-1 fractions in [0, 1];
seconds are wall-clock seconds. Which model an accuracy belongs to is in the field's name:

* ``ByStage.dense``: the dense model after the dense phase;
* ``.sparse``: the masked model after the method's sparse phase, before the top-k projection;
* ``.projected``: after the projection (masked; the compact model computes the same function);
* ``.final``: the job's final model: the compact model after its fine-tune (``final_stage``
  ``pruned``), or the masked model after its fine-tune (``sparse``, ``compact_finetune: false``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hwprune.base.errors import DataError

__all__ = ["ZERO_CAUSES", "describe_selection", "ByStage", "ScopeCount", "GroupCounts", "SplitSizes", "TrainMetrics",
           "SurgerySummary", "NMSummary", "ExportRecord", "BenchRecord", "EXPORT_SUFFIX"]

R = TypeVar("R")


def _get(d: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in d:
        raise DataError(f"{what}: missing key '{key}' (written by another hwprune version?)")
    return d[key]


def _build(cls: type[R], d: Mapping[str, Any], what: str, **nested: Any) -> R:
    """``cls(**d)`` over the dataclass's fields (required ones must be present), with ``nested`` overrides."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in nested:
            kwargs[f.name] = nested[f.name]
        elif f.name in d:
            kwargs[f.name] = d[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _get(d, f.name, what)
    return cls(**kwargs)


@dataclass(frozen=True)
class ByStage:
    """One number (accuracy or loss) per model of the job on one split (None: not measured; module docstring)."""

    dense: float | None = None
    sparse: float | None = None
    projected: float | None = None
    final: float | None = None


ZERO_CAUSES: dict[str, str] = {  # who zeroed a group (``zeroed_by`` keys), as the reports name them
    "dead": "zero before the sparse phase",
    "prox": "the method's proximal step",
    "halfspace": "the half-space step",
    "untracked": "the sparse phase before a resume (step not recorded)",
    "finalize": "the method's finalize (one-shot or trimming top-k)",
    "projection": "the final top-k projection",
}


@dataclass(frozen=True)
class ScopeCount:
    """One sparsity scope: ``total`` groups, target ``k`` kept, ``nonzero`` kept in the result.

    ``zeroed_by``: cause (``ZERO_CAUSES``) -> groups of this scope removed by it (they sum to
    ``total - nonzero``); empty in records of an older hwprune.
    """

    name: str
    total: int
    k: int
    nonzero: int
    zeroed_by: dict[str, int] = field(default_factory=dict)

    @property
    def achieved_sparsity(self) -> float:
        """Fraction of the scope's groups removed."""
        return 1.0 - self.nonzero / self.total if self.total else 0.0


@dataclass(frozen=True)
class GroupCounts:
    """Groups over all scopes: total, kept (nonzero), budget k, before the projection, zeroed by it.

    ``zeroed_by``: cause -> groups removed by it over all scopes (``ScopeCount.zeroed_by`` summed).
    """

    total: int
    nonzero: int
    k: int
    nonzero_before_projection: int
    zeroed_by_projection: int
    zeroed_by: dict[str, int] = field(default_factory=dict)


def describe_selection(groups: GroupCounts) -> str:
    """One sentence: which step chose the removed groups (e.g. "the final top-k projection removed 5 of 5")."""
    removed = groups.total - groups.nonzero
    if removed <= 0:
        return "no group was removed"
    by = {c: n for c, n in groups.zeroed_by.items() if n}
    if not by:
        return f"{removed} groups removed ({groups.zeroed_by_projection} by the final top-k projection)"
    parts = ", ".join(f"{n} by {ZERO_CAUSES.get(c, c)}" for c, n in by.items())
    text = f"{removed} of {groups.total} groups removed: {parts}"
    if by.get("projection", 0) * 2 > removed:
        text += " (the projection, not the method, chose most groups: more sparse epochs or a larger --lam " \
                "let the method select)"
    return text


@dataclass(frozen=True)
class SplitSizes:
    """Images per split and how the splits were drawn (``data_seed``, ``val_fraction``)."""

    train: int
    val: int
    test: int
    data_seed: int
    val_fraction: float


@dataclass(frozen=True)
class TrainMetrics:
    """``metrics.json``: the train job's result.

    ``test_accuracy`` is measured once, at the end of the job (dense and final model only);
    ``val_accuracy`` after each stage on the validation split (all None without one).
    ``method_info`` is the method's own, free-form report (``SparseMethod.finalize``). ``budget``
    ``recipe``: the method-independent steps (BatchNorm recalibration, distillation). ``epochs`` /
    ``steps``: epochs begun / optimiser steps taken per phase (a sparse phase that stops early hands
    its remaining steps to the fine-tune, so its last epoch and the fine-tune's are partial). ``budget``
    says where k came from: ``sparsity`` (``k = ceil((1 - sparsity) m)`` per scope; ``sparsity``
    is the requested fraction) or ``k_per_scope`` (given per scope, e.g. by a latency budget:
    ``sparsity`` is then not what was asked for).
    """

    model: str
    data: str
    profile: str
    method: str
    sparsity: float
    final_stage: str
    test_accuracy: ByStage
    val_accuracy: ByStage
    test_loss: ByStage
    scopes: list[ScopeCount]
    exact_k: bool
    groups: GroupCounts
    lam: float
    splits: SplitSizes
    epochs: dict[str, int]
    seconds: dict[str, float]
    method_options: dict[str, Any] = field(default_factory=dict)
    method_info: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    budget: str = "sparsity"
    recipe: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], what: str = "train metrics") -> TrainMetrics:
        """Inverse of :meth:`to_dict`."""
        return _build(cls, d, what,
                      test_accuracy=ByStage(**_get(d, "test_accuracy", what)),
                      val_accuracy=ByStage(**_get(d, "val_accuracy", what)),
                      test_loss=ByStage(**_get(d, "test_loss", what)),
                      scopes=[ScopeCount(**s) for s in _get(d, "scopes", what)],
                      groups=GroupCounts(**_get(d, "groups", what)),
                      splits=SplitSizes(**_get(d, "splits", what)))


@dataclass(frozen=True)
class SurgerySummary:
    """``prune_summary.json``: what surgery removed and the equivalence it proved.

    ``params``/``macs`` map ``sparse`` (the masked model) and ``pruned`` (the compact one) to counts
    (MACs per sample). ``val_accuracy`` holds both models' validation accuracy (equal up to
    float rounding; None without a validation split). ``after_finetune``: False when the surgery ran
    inside the train job (before the compact fine-tune), True when ``hwprune prune`` ran it on a
    masked model that was already fine-tuned.
    """

    params: dict[str, int]
    macs: dict[str, int]
    val_accuracy: dict[str, float | None]
    removed_channels: int
    max_abs_diff: float
    after_finetune: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], what: str = "surgery summary") -> SurgerySummary:
        """Inverse of :meth:`to_dict`."""
        return _build(cls, d, what)


@dataclass(frozen=True)
class NMSummary:
    """``nm_summary.json``: the N:M phase on the compact model.

    ``val_accuracy``: ``dense`` = the compact model before the phase, ``sparse`` = after the prox
    phase, ``projected`` = after the N:M projection, ``final`` = after the masked fine-tune;
    ``test_accuracy`` holds the final model's test accuracy, measured once at the end.
    """

    pattern: str
    n: int
    m: int
    layers: list[str]
    param_names: list[str]
    val_accuracy: ByStage
    test_accuracy: float
    zeroed_by_projection: int
    blocks: int
    max_nonzero_per_block: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], what: str = "N:M summary") -> NMSummary:
        """Inverse of :meth:`to_dict`."""
        return _build(cls, d, what, val_accuracy=ByStage(**_get(d, "val_accuracy", what)))


EXPORT_RECORD_FORMAT = 1
EXPORT_SUFFIX = ".export.json"  # the record of ``X.onnx`` is ``X.export.json`` beside it


@dataclass(frozen=True)
class ExportRecord:
    """``<name>.export.json``: one exported ONNX model ``<name>.onnx``, whichever command exported it.

    ``onnx``: the ONNX file's name (the record sits beside it); ``source``: what was exported
    (``run <RUN_DIR>`` or ``model <name>``); ``stage``: the run stage (None for a bare model);
    ``report``: ``hwprune.runtime.export.ExportReport.to_dict()`` (checker, ORT-vs-PyTorch parity per
    output at batch 1 and 3 and on the example input, tolerances, ``passed``), or on a parity
    failure ``{"passed": false, "error", "mismatches", "atol", "rtol"}``; ``nm_pattern``: the N:M
    check of an ``nm`` stage (``NMReport.to_dict()``); ``openvino``: OpenVINO-vs-PyTorch parity of
    the final model when the profile is timed on OpenVINO (``hwprune.runtime.openvino.validate_openvino``).
    """

    onnx: str
    source: str
    stage: str | None
    report: dict[str, Any]
    nm_pattern: dict[str, Any] | None = None
    openvino: dict[str, Any] | None = None
    format: int = EXPORT_RECORD_FORMAT

    @staticmethod
    def path_for(onnx_path: Any) -> Any:
        """The record's path for an ONNX file (``X.onnx`` -> ``X.export.json``)."""
        from pathlib import Path

        p = Path(onnx_path)
        return p.with_name(p.stem + EXPORT_SUFFIX)

    @property
    def passed(self) -> bool:
        """The checker and the parity check passed."""
        return bool(self.report.get("passed"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], what: str = "export record") -> ExportRecord:
        """Inverse of :meth:`to_dict`; another ``format`` is a DataError."""
        if d.get("format") != EXPORT_RECORD_FORMAT:
            raise DataError(f"{what}: export record format {d.get('format')!r}, expected {EXPORT_RECORD_FORMAT} "
                            "(re-export the model)")
        return _build(cls, d, what)


@dataclass(frozen=True)
class BenchRecord:
    """``bench.json``: ``LatencyStats`` rows of both models, speed-up rows, the spec and environment."""

    dense: list[dict[str, Any]]
    pruned: list[dict[str, Any]]
    speedup: list[dict[str, Any]]
    spec: dict[str, Any]
    env: dict[str, Any]
    fallback_note: str | None = None
    dense_path: str = ""
    pruned_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], what: str = "timing record") -> BenchRecord:
        """Inverse of :meth:`to_dict`."""
        return _build(cls, d, what)
