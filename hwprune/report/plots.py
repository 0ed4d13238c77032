"""PNG plots of a run: training curves, per-layer widths, accuracy-vs-latency (Pareto) chart.

matplotlib is imported lazily with the Agg backend, so importing this module costs nothing and
plots work without a display. Every function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hwprune.base.errors import DataError
from hwprune.base.files import atomic_path
from hwprune.base.optional import import_optional

__all__ = ["read_log", "plot_training", "plot_widths", "plot_pareto", "pareto_front", "plot_latency_table",
           "save_figure", "DPI"]

DPI = 110
_PHASE_COLORS = {"dense": "#dde8f5", "sparse": "#f7e3d2", "finetune": "#dcefd9"}


def _plt() -> Any:
    mpl = import_optional("matplotlib", extra="plots")
    mpl.use("Agg", force=True)
    return import_optional("matplotlib.pyplot", extra="plots")


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure atomically as PNG (``DPI``, tight bounding box) and close it."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight")
    finally:
        _plt().close(fig)
    return path


def read_log(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines training log; blank lines are skipped, a malformed line is a DataError."""
    records = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def plot_training(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Loss, accuracy and nonzero groups per epoch, epochs numbered across phases, phases shaded.

    Uses ``train_loss``/``val_loss``, ``train_acc``/``val_acc`` (validation split; ``eval_*`` from a
    plain ``fit`` log), ``nonzero_groups`` where present; missing fields leave gaps (a panel with no
    data says so).
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    xs = list(range(len(records)))
    series = (("loss", ("train_loss", "val_loss", "eval_loss")), ("accuracy", ("train_acc", "val_acc", "eval_acc")),
              ("nonzero groups", ("nonzero_groups",)))
    spans: list[tuple[str, int, int]] = []
    for i, rec in enumerate(records):
        phase = str(rec.get("phase", "train"))
        if spans and spans[-1][0] == phase:
            spans[-1] = (phase, spans[-1][1], i)
        else:
            spans.append((phase, i, i))
    for ax, (title, keys) in zip(axes, series, strict=True):
        drawn = False
        for key in keys:
            ys = [_num(r.get(key)) for r in records]
            if any(not math.isnan(y) for y in ys):
                ax.plot(xs, ys, marker="o", ms=3, label=key)
                drawn = True
        for phase, a, b in spans:
            ax.axvspan(a - 0.5, b + 0.5, color=_PHASE_COLORS.get(phase, "#eeeeee"), alpha=0.6, lw=0)
            ax.text((a + b) / 2, 1.0, phase, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_title(title, pad=12)
        ax.set_xlabel("epoch (all phases)")
    return save_figure(fig, path)


def plot_widths(widths: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Per-layer output width before/after surgery (``{module, before, after, block, aligned}`` rows)."""
    plt = _plt()
    names = [str(w.get("module", i)) for i, w in enumerate(widths)]
    before = [_num(w.get("before")) for w in widths]
    after = [_num(w.get("after")) for w in widths]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(names) + 2), 3.8))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before", color="#9bb7d4")
    ax.bar([x + 0.2 for x in xs], after, width=0.4, label="after", color="#d4772c")
    for x, w in zip(xs, widths, strict=True):
        if w.get("aligned") is False:
            ax.text(x + 0.2, _num(w.get("after")), "!", ha="center", va="bottom", color="red")
    ax.set_xticks(list(xs), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("output channels")
    ax.set_title("layer widths (! = not a multiple of the profile block)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def pareto_front(points: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Points not dominated in (lower latency, higher accuracy), sorted by latency."""
    pts = sorted((p for p in points if not math.isnan(_num(p.get("latency_ms"))) and
                  not math.isnan(_num(p.get("accuracy")))), key=lambda p: (_num(p["latency_ms"]), -_num(p["accuracy"])))
    front: list[Mapping[str, Any]] = []
    for p in pts:
        if not front or _num(p["accuracy"]) > _num(front[-1]["accuracy"]):
            front.append(p)
    return front


def plot_pareto(points: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Accuracy vs latency: each point ``{label, accuracy, latency_ms, kind: dense|pruned}``; front as a step line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    styles = {"dense": ("s", "#1f4e79"), "pruned": ("o", "#d4772c")}
    for kind, (marker, color) in styles.items():
        sel = [p for p in points if p.get("kind", "pruned") == kind]
        if sel:
            ax.scatter([_num(p.get("latency_ms")) for p in sel], [_num(p.get("accuracy")) for p in sel],
                       marker=marker, color=color, label=kind, zorder=3)
    for p in points:
        ax.annotate(str(p.get("label", "")), (_num(p.get("latency_ms")), _num(p.get("accuracy"))),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = pareto_front(points)
    if len(front) > 1:
        ax.step([_num(p["latency_ms"]) for p in front], [_num(p["accuracy"]) for p in front], where="post",
                color="gray", ls="--", lw=1, label="Pareto front")
    ax.set_xlabel("latency (ms, median)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs latency")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_latency_table(table: Any, path: Path) -> Path:
    """PNG of latency (ms) vs output width, one line per layer with more than one measured width.

    ``table`` is a ``hwprune.runtime.latency.LatencyTable`` (``layers``: name -> curve with ``widths``, ``ms``).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in table.layers.items():
        if len(curve.widths) > 1:
            ax.plot(curve.widths, curve.ms, marker="o", ms=3, lw=1, label=name)
    ax.set_xlabel("output channels")
    ax.set_ylabel("latency (ms, batch {})".format(table.meta.get("batch", 1)))
    ax.set_title(f"per-layer latency ({table.meta.get('backend')}/{table.meta.get('provider')})")
    if len(ax.get_lines()) <= 16:
        ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
