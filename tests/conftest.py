"""Shared test setup: isolated caches, fixed seeds, and collection-time skips for `gpu` / `trt` tests."""

from __future__ import annotations

import importlib
import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import torch


def _tensorrt_imports() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        importlib.import_module("tensorrt")
    except Exception:  # broken native libraries count as absent
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without CUDA and `trt` tests when tensorrt does not import."""
    has_cuda = torch.cuda.is_available()
    has_trt = _tensorrt_imports() if any("trt" in item.keywords for item in items) else False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (pip install 'hwprune[trt]')"))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point caches at a temporary directory and seed python, numpy and torch."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    monkeypatch.setenv("HWPRUNE_PROFILE_DIR", str(cache / "user-profiles"))  # calibrated profiles of the tests only
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, tiny, finished run (digits, 200 images, one epoch per phase), trained and exported.

    Shared read-only: tests that change it copy it first.
    """
    from hwprune.pipeline.steps import step_export
    from hwprune.training.config import TrainJobConfig
    from hwprune.training.job import run_train_job

    cfg = TrainJobConfig(model="digits_cnn", model_kwargs={"width": 0.5}, data="digits", train_limit=200, epochs=1,
                         dense_epochs=2, finetune_epochs=1, profile="x86-avx2-ort")
    root = tmp_path_factory.mktemp("finished") / "run"
    run_train_job(cfg, root, progress=False)
    step_export(root)
    return root
