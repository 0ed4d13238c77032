"""Value checks for the profile dataclasses: each raises ``FieldError`` naming the field.

The parser (``hwprune.profiles.parse``) re-raises a ``FieldError`` as one line
``<source>: <field path>: <problem>``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hwprune.base.errors import ConfigError

__all__ = ["FieldError", "describe", "suggest", "check_int", "check_str", "check_choice", "check_bool", "as_tuple"]


class FieldError(ConfigError):
    """A bad field value; ``field`` and ``detail`` let the parser prefix the file and field path."""

    def __init__(self, owner: str, field_name: str, detail: str) -> None:
        super().__init__(f"{owner}.{field_name}: {detail}")
        self.field = field_name
        self.detail = detail


def describe(value: object) -> str:
    """``"<type> <repr>"``, truncated, for error messages."""
    text = f"{type(value).__name__} {value!r}"
    return text if len(text) <= 80 else text[:77] + "..."


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_int(obj: object, name: str, minimum: int) -> None:
    """``obj.name`` must be an int (not bool) >= ``minimum``."""
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(type(obj).__name__, name, f"expected an integer, got {describe(value)}")
    if value < minimum:
        raise FieldError(type(obj).__name__, name, f"{name} must be >= {minimum} (got {value})")


def check_str(obj: object, name: str, nonempty: bool = False) -> None:
    """``obj.name`` must be a string (non-blank if ``nonempty``)."""
    value = getattr(obj, name)
    if not isinstance(value, str):
        raise FieldError(type(obj).__name__, name, f"expected a string, got {describe(value)}")
    if nonempty and not value.strip():
        raise FieldError(type(obj).__name__, name, "must be a non-empty string")


def check_choice(obj: object, name: str, choices: Sequence[str]) -> None:
    """``obj.name`` must be one of ``choices``."""
    value = getattr(obj, name)
    if not isinstance(value, str) or value not in choices:
        raise FieldError(type(obj).__name__, name,
                         f"unknown value {value!r}{suggest(str(value), choices)}; valid: {', '.join(choices)}")


def check_bool(obj: object, name: str) -> None:
    """``obj.name`` must be a bool."""
    value = getattr(obj, name)
    if not isinstance(value, bool):
        raise FieldError(type(obj).__name__, name, f"expected true/false, got {describe(value)}")


def as_tuple(obj: object, name: str) -> tuple[Any, ...]:
    """Coerce the list-like ``obj.name`` to a tuple in place (frozen dataclass) and return it."""
    value = getattr(obj, name)
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise FieldError(type(obj).__name__, name, f"expected a list, got {describe(value)}")
    out = tuple(value)
    object.__setattr__(obj, name, out)
    return out
