"""Atomic file writes and the one reader of JSON artifacts.

Every file hwprune writes goes through :func:`atomic_path`: the content is written to a temporary
file in the destination's directory and moved over the destination with ``os.replace`` only when
the writer finished, so a crash or an exception leaves the previous file or nothing, never half a
file. Files get the normal mode for new files (``0o666`` minus the umask), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hwprune.base.errors import DataError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "read_json", "file_mode"]


def file_mode() -> int:
    """Mode bits a plainly created file gets under the current umask (``0o666 & ~umask``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it replaces ``path``, else it is removed.

    Args:
        path: the destination (its parent directories are created).
        suffix: suffix of the temporary name (some writers pick their format by extension).
        fsync: flush the file to disk before the rename (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (non-JSON values such as paths are written as strings)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: str | Path, *, what: str = "JSON file", hint: str = "") -> Any:
    """Read a JSON artifact; a missing, unreadable or corrupt file is one ``DataError`` naming it.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. ``"surgery plan"``).
        hint: what to do about it (e.g. ``"run 'hwprune prune RUN_DIR' first"``).
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a {what}{tail}")
    if not path.is_file():
        raise DataError(f"{path}: missing {what}{tail}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what} ({' '.join(str(exc).split())}){tail}") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DataError(f"{path}: corrupt {what} (invalid JSON at {where}){tail}") from None
