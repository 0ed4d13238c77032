"""Save and load models as JSON (architecture + surgery plan) + safetensors (tensors). No pickle.

A saved model ``STEM`` is two files: ``STEM.json`` = ``{"format": 1, "model": name, "kwargs": {...},
"input_shape": [C, H, W], "plan": SurgeryPlan dict | null, "extra": {...}}`` and
``STEM.safetensors`` (the state dict). Loading re-creates the architecture from the registry,
replays the surgery plan on it, then loads the tensors strictly: nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.base.errors import ConfigError, DataError
from hwprune.base.files import atomic_path, atomic_write_json

__all__ = ["save_model", "load_model"]

FORMAT_VERSION = 1


def _spec_of(model: nn.Module) -> dict[str, Any]:
    spec = getattr(model, "hwprune_spec", None)
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(
            "model has no 'hwprune_spec' (create it with hwprune.models.create_model so it can be re-created)"
        )
    return spec


def save_model(
    model: nn.Module,
    stem: Path,
    *,
    input_shape: tuple[int, ...],
    plan: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``stem.json`` and ``stem.safetensors`` atomically.

    Args:
        model: a registry model (``model.hwprune_spec`` set); may be compact (after surgery).
        stem: path without suffix.
        input_shape: one example input without the batch dim, e.g. (1, 8, 8).
        plan: the SurgeryPlan (as a dict) that turns the fresh architecture into ``model``'s shapes.
        extra: any JSON-serialisable metadata (accuracy, stage, ...).
    """
    from safetensors.torch import save_file

    stem = Path(stem)
    spec = _spec_of(model)
    meta = {
        "format": FORMAT_VERSION,
        "model": spec["name"],
        "kwargs": spec.get("kwargs", {}),
        "input_shape": list(input_shape),
        "plan": plan,
        "extra": extra or {},
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(stem.with_suffix(".safetensors"), suffix=".safetensors.tmp") as tmp:
        save_file(state, str(tmp))
    atomic_write_json(stem.with_suffix(".json"), meta)


def load_model(stem: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Re-create a model saved by ``save_model``; returns ``(model in eval mode, metadata)``."""
    from safetensors.torch import load_file

    from hwprune.models import create_model

    stem = Path(stem)
    jpath, tpath = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for p in (jpath, tpath):
        if not p.is_file():
            raise DataError(f"{p}: missing (expected a model saved by hwprune as {stem.name}.json + .safetensors)")
    try:
        meta = json.loads(jpath.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{jpath}: not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise DataError(f"{jpath}: unsupported model format {meta.get('format')!r} (expected {FORMAT_VERSION})")
    model = create_model(meta["model"], **meta.get("kwargs", {}))
    if meta.get("plan"):
        from hwprune.surgery.remove import apply_plan

        example = torch.zeros(1, *meta["input_shape"])
        model = apply_plan(model, meta["plan"], example)
    state = load_file(str(tpath))
    result = model.load_state_dict(state, strict=True)
    del result
    model.eval()
    return model, meta
