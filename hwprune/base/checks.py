"""Value checks shared by every layer: one definition of each valid range.

The sparsity of hwprune is the fraction of groups removed per scope. It lives in ``[0, 1)``: 0 keeps
everything, and a value of 1 would ask to remove every group, which no scope allows (``k >= 1``).
Every command, config field and library entry point checks it here, so the interval is stated once.
"""

from __future__ import annotations

import math

from hwprune.base.errors import ConfigError

__all__ = ["SPARSITY_INTERVAL", "BLOCK_ORDERS", "check_sparsity"]

SPARSITY_INTERVAL = "[0, 1)"  # the one valid range of a sparsity, as the error messages print it
BLOCK_ORDERS = ("index", "norm")  # which channels share a channel block (hwprune.groups.channels)


def check_sparsity(value: object, *, what: str = "sparsity") -> float:
    """Return ``value`` as a float if it is a sparsity in ``[0, 1)``; else raise ``ConfigError``.

    Args:
        value: the candidate (a number; bools and non-numbers are rejected).
        what: the name the message uses (e.g. ``"--sparsity"`` or ``"config.yaml: sparsity"``).

    Raises:
        ConfigError: not a number, NaN, or outside ``[0, 1)``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(float(value)):
        raise ConfigError(f"{what} must be a number in {SPARSITY_INTERVAL}, got {value!r}")
    s = float(value)
    if not 0.0 <= s < 1.0:
        raise ConfigError(f"{what} must be in {SPARSITY_INTERVAL}, got {value!r}")
    return s
