"""The peer benchmark's own code: every arm gets a plot marker, and a merge averages each run once.

``peer_compare``'s plot once failed after hours of training when an arm was added.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench(name: str = "peer_compare") -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_plot_has_a_marker_for_every_arm(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pc = _bench()
    arms = pc.HW_ARMS + pc.TP_ARMS
    summary = [{"model": m, "sparsity": 0.5, "arm": a, "acc": 90.0 - i, "lat_b1_ms": 0.1 + 0.01 * i}
               for m in ("resnet20", "vgg") for i, a in enumerate(arms)]
    out = tmp_path / "pareto.png"
    pc.plot(summary, out)
    assert out.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png"]  # no temp file left behind


def _csv(path: Path, seed: int, accs: dict[str, float]) -> Path:
    head = ("model,seed,sparsity,arm,acc,acc_dense,drop_pt,params,macs,s_train,s_per_ft_epoch,zeroed_by_projection,"
            "lat_b1_ms,lat_b32_ms")
    lines = [f"vgg,{seed},0.5,{arm},{acc},91.0,{91.0 - acc},100,1000,10.0,2.0,{0 if arm == 'wgsef' else ''},0.1,1.0"
             for arm, acc in accs.items()]
    path.write_text("\n".join([head, *lines]) + "\n")
    return path


def test_merge_averages_seeds_and_refuses_a_run_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    pm = _bench("peer_merge")
    a = _csv(tmp_path / "a.csv", 0, {"wgsef": 90.0, "tp-magnitude": 89.0})
    b = _csv(tmp_path / "b.csv", 1, {"wgsef": 88.0, "tp-magnitude": 90.0})
    out = tmp_path / "out"
    out.mkdir()
    assert pm.main([str(a), str(b), "--tag", "t", "--out-dir", str(out)]) == 0
    text = (out / "peer_compare-t-merged.md").read_text()
    assert "| vgg | 0.5 | wgsef | 2 | 89 | 2 |" in text  # mean 89.0, spread 2 pt
    assert "wgsef 89.00 % vs best peer tp-magnitude 89.50 % -> misses" in text
    assert pm.main([str(a), str(a), "--tag", "t2", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in both" in err[0]
    assert not list(out.glob("peer_compare-t2-*"))
