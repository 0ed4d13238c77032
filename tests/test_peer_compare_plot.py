"""``benchmarks/peer_compare.py``'s Pareto plot draws every arm it runs (it once failed after hours of training)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _peer_compare() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("peer_compare", BENCH / "peer_compare.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_plot_has_a_marker_for_every_arm(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pc = _peer_compare()
    arms = pc.HW_ARMS + pc.TP_ARMS
    summary = [{"model": m, "sparsity": 0.5, "arm": a, "acc": 90.0 - i, "lat_b1_ms": 0.1 + 0.01 * i}
               for m in ("resnet20", "vgg") for i, a in enumerate(arms)]
    out = tmp_path / "pareto.png"
    pc.plot(summary, out)
    assert out.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png"]  # no temp file left behind
