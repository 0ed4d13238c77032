"""Save and load models as JSON (architecture + surgery plan) + safetensors (tensors). No pickle.

A saved model ``STEM`` is two files: ``STEM.json`` = ``{"format": 1, "model": name, "kwargs": {...},
"input_shape": [C, H, W], "plan": SurgeryPlan dict | null, "extra": {...}}`` and
``STEM.safetensors`` (the state dict). Loading re-creates the architecture from the registry,
replays the surgery plan on it, then loads the tensors strictly: nothing is unpickled. A
``package.module:callable`` model also records ``import_path`` (the directory its module was
imported from), put on ``sys.path`` when it is loaded, so the files load from any directory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.base.errors import ConfigError, DataError
from hwprune.base.files import atomic_path, atomic_write_json, read_json, read_safetensors
from hwprune.base.optional import add_import_path

__all__ = ["save_model", "load_model"]

FORMAT_VERSION = 1


def _spec_of(model: nn.Module) -> dict[str, Any]:
    spec = getattr(model, "hwprune_spec", None)
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(
            "model has no 'hwprune_spec' (create it with hwprune.models.create_model so it can be re-created)"
        )
    return spec


def _import_root(name: str) -> str | None:
    """For a ``package.module:callable`` model: the absolute directory its top package is imported from."""
    if ":" not in name:
        return None
    module = sys.modules.get(name.partition(":")[0])
    file = getattr(module, "__file__", None)
    if not file:
        return None
    depth = name.partition(":")[0].count(".") + (1 if Path(file).name == "__init__.py" else 0)
    return str(Path(file).resolve().parents[depth])


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
        "import_path": _import_root(spec["name"]),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(stem.with_suffix(".safetensors"), suffix=".safetensors.tmp") as tmp:
        save_file(state, str(tmp))
    atomic_write_json(stem.with_suffix(".json"), meta)


def load_model(stem: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Re-create a model saved by ``save_model``; returns ``(model in eval mode, metadata)``.

    Raises:
        DataError: a missing, empty, truncated or corrupt ``.json`` / ``.safetensors`` file, a
            description hwprune cannot rebuild, or tensors that do not fit it: one line naming the
            file and what to do (nothing is unpickled).
    """
    from hwprune.base.errors import HwpruneError
    from hwprune.models import create_model

    stem = Path(stem)
    jpath, tpath = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    hint = f"re-create it (a model saved by hwprune is {stem.name}.json + {stem.name}.safetensors)"
    meta = read_json(jpath, what="saved model description", hint=hint)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{jpath}: not a model saved by this hwprune (format {got!r}, expected {FORMAT_VERSION})")
    if not isinstance(meta.get("model"), str) or not isinstance(meta.get("kwargs", {}), dict):
        raise DataError(f"{jpath}: corrupt saved model description (no 'model' name or 'kwargs' mapping); {hint}")
    state = read_safetensors(tpath, what="model weights file", hint=hint)
    add_import_path(meta.get("import_path") if isinstance(meta.get("import_path"), str) else None)
    try:
        model = create_model(meta["model"], **meta.get("kwargs", {}))
        if meta.get("plan"):
            from hwprune.surgery.remove import apply_plan

            example = torch.zeros(1, *meta["input_shape"])
            model = apply_plan(model, meta["plan"], example)
    except HwpruneError as exc:
        raise DataError(f"{jpath}: cannot rebuild the saved model ({exc})") from None
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise DataError(f"{jpath}: corrupt saved model description ({type(exc).__name__}: {exc}); {hint}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise DataError(f"{tpath}: the weights do not fit the model of {jpath.name} ({first}); {hint}") from None
    model.eval()
    return model, meta
