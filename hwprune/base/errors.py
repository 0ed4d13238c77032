"""Typed errors shared by the library and the CLI.

Every user-facing problem (bad config, missing file, missing backend) is a ``HwpruneError``;
the CLI prints its one-line message and exits with code 2, without a traceback.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "HwpruneError",
    "ConfigError",
    "DataError",
    "MissingBackendError",
    "NumericalMismatchError",
]


class HwpruneError(Exception):
    """Base class of every error hwprune raises on purpose."""


class ConfigError(HwpruneError, ValueError):
    """Invalid user input: profile, CLI option, config file, model or dataset name."""


class DataError(HwpruneError):
    """A dataset file is missing or corrupt; the message names the path and what was expected."""


class MissingBackendError(HwpruneError, ImportError):
    """An optional backend (onnxruntime, tensorrt, ...) is not installed; names the pip extra."""


class NumericalMismatchError(HwpruneError):
    """A numerical contract (atol/rtol) was violated; ``mismatches`` lists every offending output."""

    def __init__(self, message: str, mismatches: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.mismatches = list(mismatches or [])
