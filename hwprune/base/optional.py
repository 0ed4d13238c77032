"""Lazy import of optional backends (one error style that names the pip extra) and the model import path."""

from __future__ import annotations

import importlib
from types import ModuleType

from hwprune.base.errors import MissingBackendError

__all__ = ["import_optional", "add_import_path"]


def import_optional(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``MissingBackendError`` naming ``pip install 'hwprune[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # includes ModuleNotFoundError and broken native libs
        raise MissingBackendError(
            f"backend '{module}' is not available ({exc.__class__.__name__}: {exc}); "
            f"install it with: pip install 'hwprune[{extra}]'"
        ) from exc


def add_import_path(paths: str | None) -> None:
    """Put each directory of ``paths`` (``os.pathsep``-separated) at the front of ``sys.path`` (once).

    What ``--model-path DIR`` and a run's recorded ``model_path`` do before a
    ``package.module:callable`` model is imported.
    """
    import os
    import sys

    for d in reversed([d for d in (paths or "").split(os.pathsep) if d]):
        if d not in sys.path:
            sys.path.insert(0, d)
