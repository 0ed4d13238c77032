"""Atomic training checkpoints that load with ``torch.load(..., weights_only=True)``.

A checkpoint is a dict of tensors and plain containers only (no pickled objects)::

    {"format": "hwprune-checkpoint", "version": 1, "epoch": int,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict | None,
     "rng": {"python": ..., "numpy": ..., "torch": ByteTensor, "cuda": [ByteTensor]}, "extra": dict}

The second half keeps the JSON-lines training log consistent with a resumed checkpoint.
RNG states are converted to tensors by :func:`capture_rng_state` and restored by
:func:`restore_rng_state`, so a resumed run draws exactly the random numbers the uninterrupted
run would have drawn.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwprune.base.errors import DataError
from hwprune.base.files import atomic_path, atomic_write_text
from hwprune.training import distributed as ddp
from hwprune.training.distributed import unwrap

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointInfo",
    "CheckpointMismatchError",
    "capture_rng_state",
    "restore_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "resume_from",
    "to_plain",
    "append_log_record",
    "trim_log",
]

CHECKPOINT_FORMAT = "hwprune-checkpoint"
CHECKPOINT_VERSION = 1
_LOG = logging.getLogger(__name__)


class CheckpointMismatchError(DataError):
    """The checkpoint's ``extra`` metadata differs from what the caller expected (e.g. its phase)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`load_checkpoint` read besides the restored state.

    Attributes:
        path: the checkpoint file.
        epoch: last completed epoch (0-based) stored in the file.
        rng_state: the RNG state dict (pass to :func:`restore_rng_state`).
        extra: caller-defined plain data (phase, seed, history, ...).
    """

    path: Path
    epoch: int
    rng_state: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA, if initialised) RNG states as tensors + plain values."""
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (missing entries are left untouched)."""
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    if "numpy" in state:
        npst = state["numpy"]
        keys = npst["keys"].numpy().astype(np.uint32)
        np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["gauss"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    epoch: int,
    rng_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file in the same directory, fsync, ``os.replace``).

    ``model`` may be DDP-wrapped (the inner module's state_dict is stored, without ``module.``).
    ``extra`` must hold only plain data (str/int/float/bool/None, lists, dicts, tensors).
    A crash at any point leaves either the previous file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": int(epoch),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state if rng_state is not None else capture_rng_state(),
        "extra": dict(extra or {}),
    }
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
    return path


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    map_location: str | torch.device = "cpu",
    expect: dict[str, Any] | None = None,
) -> CheckpointInfo:
    """Load a checkpoint with ``weights_only=True`` and restore the given objects in place.

    Objects passed as ``None`` are skipped. ``expect`` maps ``extra`` keys to required values; a
    difference raises ``CheckpointMismatchError`` before anything is restored. RNG states are
    *returned*, not applied (see :func:`restore_rng_state`). Raises ``DataError`` naming the path
    when the file is missing, unreadable, not an hwprune checkpoint, or does not match the model.
    """
    path = Path(path)
    restart = "delete it to restart that phase from its first epoch, or run without --resume"
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a training checkpoint; {restart}")
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # any failure of the restricted unpickler means "unreadable"
        # torch's own message advises weights_only=False, which would execute arbitrary pickled code:
        # only the kind of failure is reported.
        raise DataError(f"{path}: cannot read the training checkpoint (truncated, corrupt, or holding pickled "
                        f"objects, which hwprune never loads); {restart}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not an hwprune checkpoint (expected format '{CHECKPOINT_FORMAT}'); {restart}")
    if payload.get("version") != CHECKPOINT_VERSION:
        got = payload.get("version")
        raise DataError(f"{path}: checkpoint version {got} unsupported (expected {CHECKPOINT_VERSION})")
    extra = payload.get("extra") or {}
    for key, want in (expect or {}).items():
        if extra.get(key) != want:
            raise CheckpointMismatchError(f"checkpoint {path} has {key}={extra.get(key)!r}, expected {want!r}")
    try:
        if model is not None:
            unwrap(model).load_state_dict(payload["model"])
        if optimizer is not None and payload["optimizer"] is not None:
            optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None and payload["scheduler"] is not None:
            scheduler.load_state_dict(payload["scheduler"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise DataError(f"checkpoint {path} does not match the model/optimizer ({first}); {restart}") from None
    return CheckpointInfo(
        path=path, epoch=int(payload["epoch"]), rng_state=payload.get("rng") or {}, extra=extra
    )


def resume_from(
    path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any | None, phase: str,
    map_location: str | torch.device = "cpu",
) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """Restore ``path`` if it exists and belongs to ``phase``; return (next epoch, stored history, callback states).

    A missing file or a checkpoint of another phase means a fresh start: ``(0, [], {})``.
    """
    if not path.exists():  # a directory (or anything else) in its place is load_checkpoint's one-line error
        _LOG.info("resume requested but %s does not exist; starting from epoch 0", path)
        return 0, [], {}
    try:
        info = load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler,
                               map_location=map_location, expect={"phase": phase})
    except CheckpointMismatchError as exc:
        _LOG.warning("%s; starting phase '%s' from epoch 0", exc, phase)
        return 0, [], {}
    if info.extra.get("world_size", 1) != ddp.get_world_size():
        _LOG.warning("resuming with world size %d (checkpoint: %s): the data order differs",
                     ddp.get_world_size(), info.extra.get("world_size"))
    return info.epoch + 1, list(info.extra.get("history", [])), dict(info.extra.get("callbacks", {}))


def to_plain(obj: Any) -> Any:
    """JSON- and weights_only-safe copy: tensors/NumPy to Python numbers, NaN/Inf to None."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().tolist()
    elif isinstance(obj, (np.ndarray, np.generic)):
        obj = obj.tolist()
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def append_log_record(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON object as a line to ``path`` and flush it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(to_plain(record), allow_nan=False) + "\n")
        fh.flush()


def trim_log(path: Path, phase: str, last_epoch: int) -> None:
    """Drop ``phase`` records with epoch > ``last_epoch`` and torn lines; rewrite atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            _LOG.warning("dropping an unreadable line in %s", path)
            continue
        if not (rec.get("phase") == phase and rec.get("epoch", -1) > last_epoch):
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))
