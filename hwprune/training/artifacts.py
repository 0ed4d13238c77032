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

__all__ = ["ByStage", "ScopeCount", "GroupCounts", "SplitSizes", "TrainMetrics", "SurgerySummary",
           "NMSummary", "ExportRecord", "BenchRecord"]

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


@dataclass(frozen=True)
class ScopeCount:
    """One sparsity scope: ``total`` groups, target ``k`` kept, ``nonzero`` kept in the result."""

    name: str
    total: int
    k: int
    nonzero: int


@dataclass(frozen=True)
class GroupCounts:
    """Groups over all scopes: total, kept (nonzero), budget k, before the projection, zeroed by it."""

    total: int
    nonzero: int
    k: int
    nonzero_before_projection: int
    zeroed_by_projection: int


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
    ``method_info`` is the method's own, free-form report (``SparseMethod.finalize``).
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


@dataclass(frozen=True)
class ExportRecord:
    """``export_report.json``: the stage, both models' ``ExportReport`` dicts, the N:M check, OpenVINO parity."""

    stage: str
    dense: dict[str, Any]
    model: dict[str, Any]
    nm_pattern: dict[str, Any] | None = None
    openvino: dict[str, Any] | None = None  # OpenVINO parity of the final model (profiles timed on OpenVINO)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], what: str = "export record") -> ExportRecord:
        """Inverse of :meth:`to_dict`."""
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
