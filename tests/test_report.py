"""Report schema, report.md content, PNG plots (including logs with missing fields)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwprune.base.errors import ConfigError
from hwprune.report.plots import pareto_front, plot_pareto, plot_training
from hwprune.report.render import REPORT_SCHEMA_VERSION, REQUIRED_KEYS, summary_table, validate_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lat(batch: int, ms: float) -> dict:
    return {"backend": "onnxruntime", "provider": "cpu", "precision": "fp32", "batch": batch, "median_ms": ms,
            "p90_ms": ms * 1.1, "p99_ms": ms * 1.2, "min_ms": ms * 0.9, "throughput_per_s": batch * 1000 / ms}


def _report() -> dict:
    return {
        "schema_version": REPORT_SCHEMA_VERSION, "profile": "x86-avx2-ort", "model": "digits_cnn",
        "data": "digits", "method": "wgsef", "sparsity_target": 0.5,
        "scopes": [{"name": "conv1", "total": 32, "k": 16, "nonzero": 16},
                   {"name": "conv2", "total": 8, "k": 4, "nonzero": 5}],
        "accuracy": {"dense": 0.9812, "pruned": 0.9733}, "params": {"dense": 56554, "pruned": 14458},
        "macs": {"dense": 1788544, "pruned": 451904},
        "latency": {"dense": [_lat(1, 0.25), _lat(32, 4.0)], "pruned": [_lat(1, 0.125), _lat(32, 1.6)]},
        "environment": {"cpu_model": "Test CPU 9000", "isa": ["avx2"]}, "versions": {"torch": "2.13.0"},
        "timings": {"train": 12.5, "surgery": 0.75},
        "sweep": [{"label": "s=0.7", "accuracy": 0.95, "latency_ms": 0.1, "kind": "pruned"}],
    }


def _write(root: Path, report: dict, log_path: Path | None = None) -> tuple[Path, Path]:
    return write_report(report, json_path=root / "report.json", md_path=root / "report.md", plots_dir=root / "plots",
                        log_path=log_path)


def _is_png(p: Path) -> bool:
    data = p.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_validate_report_names_every_missing_key() -> None:
    validate_report(_report())
    bad = _report()
    del bad["macs"], bad["timings"]
    bad["accuracy"] = {"dense": 0.9}
    with pytest.raises(ConfigError) as exc:
        validate_report(bad)
    msg = str(exc.value)
    assert "missing 'macs'" in msg and "missing 'timings'" in msg and "'accuracy' needs" in msg
    with pytest.raises(ConfigError, match="schema_version"):
        validate_report({**_report(), "schema_version": 99})
    assert "latency" in REQUIRED_KEYS


def test_write_report_json_md_and_plots(tmp_path: Path) -> None:
    log = [{"phase": "dense", "epoch": 0, "train_loss": 2.0, "train_acc": 0.3, "eval_acc": 0.4},
           {"phase": "sparse", "epoch": 0, "train_loss": 1.0, "eval_acc": 0.8, "nonzero_groups": 40},
           {"phase": "finetune", "epoch": 0, "train_loss": 0.5, "eval_acc": 0.9, "nonzero_groups": 21}]
    (tmp_path / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    widths = [{"module": "conv1", "before": 32, "after": 16, "block": 8, "aligned": True},
              {"module": "conv2", "before": 8, "after": 5, "block": 8, "aligned": False}]
    jpath, mpath = _write(tmp_path, {**_report(), "widths": widths}, log_path=tmp_path / "train_log.jsonl")
    saved = json.loads(jpath.read_text())
    assert saved["speedup"][0] == pytest.approx({"batch": 1, "dense_median_ms": 0.25, "pruned_median_ms": 0.125,
                                                 "speedup": 2.0, "speedup_per_mac_reduction": 2.0 / (1788544 / 451904)})
    assert saved["speedup"][1]["speedup"] == pytest.approx(2.5)
    assert set(saved["plots"]) == {"training", "widths", "pareto"}
    for rel in saved["plots"].values():
        assert _is_png(tmp_path / rel)
    md = mpath.read_text()
    for text in ("x86-avx2-ort", "digits_cnn", "wgsef", "0.9812", "0.9733", "56554", "14458", "1788544",
                 "451904", "Test CPU 9000", "2.13.0", "12.5", "| conv2 | 8 | 4 | 5 | - | 0.5 | 0.375 |",
                 "![pareto](plots/pareto.png)", "| 32 | 4 | 1.6 | 2.5 |"):
        assert text in md, text


def test_write_report_without_log_or_plan(tmp_path: Path) -> None:
    _, mpath = _write(tmp_path, _report(), log_path=tmp_path / "missing.jsonl")
    assert not (tmp_path / "plots" / "training.png").exists()
    assert _is_png(tmp_path / "plots" / "pareto.png")
    assert "training" not in json.loads((tmp_path / "report.json").read_text())["plots"]
    with pytest.raises(ConfigError):
        _write(tmp_path / "other", {"model": "x"})
    assert not (tmp_path / "other" / "report.json").exists()


def test_plot_training_handles_missing_fields(tmp_path: Path) -> None:
    records = [{"epoch": 0}, {"phase": "sparse", "train_loss": "n/a"}, {"phase": "sparse", "nonzero_groups": 3}]
    assert _is_png(plot_training(records, tmp_path / "t.png"))
    assert _is_png(plot_training([], tmp_path / "empty.png"))


def test_pareto_front_and_plot(tmp_path: Path) -> None:
    pts = [{"label": "dense", "accuracy": 0.98, "latency_ms": 1.0, "kind": "dense"},
           {"label": "a", "accuracy": 0.97, "latency_ms": 0.5, "kind": "pruned"},
           {"label": "b", "accuracy": 0.90, "latency_ms": 0.6, "kind": "pruned"},  # dominated by a
           {"label": "c", "accuracy": 0.93, "latency_ms": 0.3, "kind": "pruned"}]
    assert [p["label"] for p in pareto_front(pts)] == ["c", "a", "dense"]
    assert _is_png(plot_pareto(pts, tmp_path / "p.png"))


def test_summary_table_has_rows() -> None:
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(summary_table(_report()))
    text = console.export_text()
    assert "2.00x" in text and "0.9733" in text and "56,554" in text


def test_lost_alignment_is_warned_and_marked() -> None:
    from hwprune.report.build import _widths
    from hwprune.training.compact import alignment_warnings

    rows = [{"module": "fc1", "before": 120, "after": 64, "block": 8, "aligned": True},
            {"module": "fc2", "before": 84, "after": 42, "block": 1, "aligned": True},  # fallback: single channels
            {"module": "fc", "before": 10, "after": 10, "block": 1, "aligned": True}]  # the output: untouched
    layers = [{"layer": "fc2", "note": "fallback channel for fc2"}, {"layer": "fc1", "note": ""}]
    widths = _widths(rows, 8)
    assert [w["aligned"] for w in widths] == [True, False, True]  # the plot marks fc2 with "!"
    warnings = alignment_warnings(layers, widths, 8)
    assert len(warnings) == 2 and all("fc2" in w for w in warnings)
    assert "84 -> 42" not in warnings[1] and "kept width 42 (from 84) is not a multiple of 8" in warnings[1]
    assert alignment_warnings(layers, widths, 1) == []  # a profile without blocks has no alignment to lose
