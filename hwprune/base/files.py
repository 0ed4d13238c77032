"""Atomic file writes and the readers of JSON, YAML and safetensors files (one-line errors).

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

from hwprune.base.errors import ConfigError, DataError, HwpruneError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "read_json", "read_yaml",
           "read_safetensors", "check_readable_file", "file_mode", "dir_mode"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode bits a plainly created file gets under the current umask (``0o666 & ~umask``)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Mode bits a plainly created directory gets under the current umask (``0o777 & ~umask``)."""
    return 0o777 & ~_umask()


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
    check_readable_file(path, what, tail)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what} ({' '.join(str(exc).split())}){tail}") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DataError(f"{path}: corrupt {what} (invalid JSON at {where}){tail}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__


def check_readable_file(path: Path, what: str, tail: str = "") -> None:
    """Raise ``DataError`` unless ``path`` is an existing, non-empty regular file.

    Args:
        path: the file.
        what: what it should be, for the message.
        tail: appended to the message (``"; what to do"``).
    """
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file ({what} expected){tail}")
    if not path.is_file():
        raise DataError(f"{path}: missing {what}{tail}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({_one_line(exc)}){tail}") from None
    if size == 0:
        raise DataError(f"{path}: empty file ({what} expected){tail}")


def read_yaml(path: str | Path, *, what: str = "YAML file", hint: str = "",
              error: type[HwpruneError] = ConfigError) -> Any:
    """Read a YAML file; missing, unreadable or malformed is one ``error`` line naming it (line and column).

    Args:
        path: the file.
        what: what the file is, for the message (e.g. ``"config file"``).
        hint: what to do about it.
        error: the error class (``ConfigError`` for a user's file, ``DataError`` for an artifact).

    Returns:
        The parsed document (an empty file is ``None``).
    """
    import yaml

    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if path.is_dir():
        raise error(f"{path}: is a directory, not a file ({what} expected){tail}")
    if not path.is_file():
        raise error(f"{path}: {what} not found{tail}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what} ({_one_line(exc)}){tail}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{path}: malformed YAML{where} ({' '.join(str(problem).split())}){tail}") from None


def read_safetensors(path: str | Path, *, what: str = "tensor file", hint: str = "") -> dict[str, Any]:
    """Load a ``.safetensors`` file (no pickle); missing, truncated or corrupt is one ``DataError`` naming it.

    Returns:
        Name -> CPU tensor.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    tail = f"; {hint}" if hint else ""
    check_readable_file(path, what, tail)
    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DataError(f"{path}: corrupt or truncated {what} ({_one_line(exc)}){tail}") from None
