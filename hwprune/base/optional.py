"""Lazy import of optional backends with one error style that names the pip extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from hwprune.base.errors import MissingBackendError

__all__ = ["import_optional"]


def import_optional(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``MissingBackendError`` naming ``pip install 'hwprune[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # includes ModuleNotFoundError and broken native libs
        raise MissingBackendError(
            f"backend '{module}' is not available ({exc.__class__.__name__}: {exc}); "
            f"install it with: pip install 'hwprune[{extra}]'"
        ) from exc
