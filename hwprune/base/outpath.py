"""The one check of an output path, run by every command before any work (``--out``, a run directory).

``check_out_dir`` / ``check_out_file`` create nothing: they find the nearest existing ancestor of
the path, require it to be a directory, and prove that a file can be created there with
``os.access`` *and* a probe write (root ignores permission bits, and a read-only file system only
shows on a real write). A path of the wrong kind (a file where a directory is wanted, a directory
where a file is wanted) is rejected too, as is an existing output file unless the caller allows
replacing it. Every failure is one ``ConfigError`` line naming the option, the path and what to do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hwprune.base.errors import ConfigError

__all__ = ["check_out_dir", "check_out_file", "check_writable_dir"]


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``.`` for a relative path with none)."""
    p = path
    while not p.exists() and not p.is_symlink():
        if p.parent == p:
            break
        p = p.parent
    return p


def _write_problem(directory: Path) -> str | None:
    """Why no file can be created in ``directory`` (None: a probe file was created and removed)."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".hwprune-probe-")
    except OSError as exc:
        return exc.strerror or exc.__class__.__name__
    os.close(fd)
    os.unlink(name)
    return None


def _label(option: str, path: Path) -> str:
    return f"{option} {path}" if option else str(path)


def check_writable_dir(directory: Path | str, *, option: str = "") -> Path:
    """Require an existing directory in which files can be created (e.g. a run directory a step writes to).

    Raises:
        ConfigError: not a directory, or not writable (one line naming ``option`` and the path).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{_label(option, directory)}: not a directory")
    problem = _write_problem(directory)
    if problem is not None:
        raise ConfigError(f"{_label(option, directory)}: cannot write there ({problem}); "
                          "make it writable or copy it somewhere writable")
    return directory


def check_out_dir(path: Path | str, *, option: str = "--out") -> Path:
    """Check that ``path`` can become (or already is) an output directory; creates nothing.

    Args:
        path: the directory the command will write into (it may not exist yet).
        option: the option's name for the message (``"--out"``; ``""`` for an argument).

    Raises:
        ConfigError: ``path`` is an existing file or a dangling link, an ancestor is a file, or
            no file can be created in the nearest existing ancestor.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{_label(option, path)}: is an existing file, expected a directory; choose another path")
    _check_creatable(path, _label(option, path))
    return path


def _check_creatable(path: Path, label: str) -> None:
    """Raise unless ``path`` (a directory, existing or not) can be created and written in."""
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{label}: a dangling symbolic link; remove it or choose another path")
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise ConfigError(f"{label}: {base} is a file, not a directory")
    problem = _write_problem(base)
    if problem is not None:
        where = "" if base == path.absolute() else f" in {base}"
        raise ConfigError(f"{label}: cannot write{where} ({problem}); choose a writable location")


def check_out_file(path: Path | str, *, option: str = "--out", replace: bool = False,
                   replace_flag: str = "--force") -> Path:
    """Check that a file can be written at ``path``; creates nothing.

    Args:
        path: the output file.
        option: the option's name for the message.
        replace: allow replacing an existing file (else it is an error naming ``replace_flag``).
        replace_flag: the option that allows it, for the message.

    Raises:
        ConfigError: ``path`` is a directory, an existing file (unless ``replace``), or its directory
            cannot be created or written.
    """
    if str(path).endswith(("/", os.sep)):
        raise ConfigError(f"{_label(option, Path(path))}/: names a directory, expected a file path (e.g. X/model.onnx)")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{_label(option, path)}: is a directory, expected a file path")
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{_label(option, path)}: a dangling symbolic link; remove it or choose another path")
    if path.exists() and not replace:
        raise ConfigError(f"{_label(option, path)}: already exists; pass {replace_flag} to replace it")
    _check_creatable(path.absolute().parent, _label(option, path))
    return path
