"""Slow: real torchvision architectures through groups, surgery and ONNX export (``benchmarks/zoo_bench.py``'s worker).

torchvision is optional and this test installs nothing: without it every case skips. To run it::

    .venv/bin/pip install -c constraints.txt torchvision==0.28.0
    .venv/bin/python -m pytest -m slow tests/test_zoo.py                      # the issue-12 table (12 models)
    ZOO_MODELS=all .venv/bin/python -m pytest -m slow tests/test_zoo.py       # every classification model
    ZOO_MODELS=resnet18,swin_t .venv/bin/python -m pytest -m slow tests/test_zoo.py

Each (model, profile) must pass outright (compact == masked within the surgery contract, fewer
parameters, ONNX export with ORT parity) or be refused with one line; a crash or a numerical
mismatch fails. The table models must pass outright.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

TABLE = ("resnet18", "mobilenet_v2", "efficientnet_b0", "densenet121", "regnet_x_400mf", "mnasnet0_5",
         "squeezenet1_0", "vgg11_bn", "shufflenet_v2_x0_5", "convnext_tiny", "vit_b_16", "swin_t")
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
MAX_PARAMS = 150e6  # as zoo_bench's default: larger models do not fit this 24 GiB shared machine


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo_bench.py"
    spec = importlib.util.spec_from_file_location("zoo_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _names() -> list[str]:
    wanted = os.environ.get("ZOO_MODELS", "")
    if wanted != "all":
        return [n for n in wanted.split(",") if n] or list(TABLE)
    if not HAS_TORCHVISION:
        return list(TABLE)
    bench = _bench()
    sizes = bench._param_counts(bench.classification_models())
    return [n for n, p in sizes.items() if p <= MAX_PARAMS]


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision not installed (optional; see this file's docstring)")
@pytest.mark.parametrize("name", _names())
def test_torchvision_model_prunes_and_exports(name: str) -> None:
    bench = _bench()
    args = argparse.Namespace(profiles=list(bench.PROFILES), size=64, fraction=0.3, seed=0)
    rows = bench.worker(name, args)
    assert [r["profile"] for r in rows] == list(bench.PROFILES)
    for r in rows:
        assert r["status"] in ("pass", "refused"), f"{name}/{r['profile']}: {r['status']}: {r.get('message')}"
        if r["status"] == "refused":
            assert "\n" not in r["message"] and name not in TABLE, r["message"]
        else:
            assert r["params_compact"] < r["params_dense"] and r["ort_max_abs"] < 1e-3
