"""The optional parts of a ``fit`` callback beyond ``on_step_end`` / ``on_epoch_end``.

* ``stop_requested() -> bool``: checked after every optimiser step (and before every epoch); True
  ends the phase there (e.g. a sparse phase whose selection is finished). The partial epoch is
  recorded and checkpointed like a full one, so a resumed run stops at once.
* ``state_dict() -> dict`` / ``load_state_dict(dict)``: plain data (tensors allowed) stored in the
  phase's epoch checkpoint and restored on resume (e.g. which step zeroed each group), keyed by the
  callback's position and class name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["stop_requested", "callback_states", "load_callback_states"]


def stop_requested(callbacks: Sequence[Any]) -> bool:
    """True when a callback's ``stop_requested()`` asks to end the phase (identical on every DDP rank)."""
    return any(cb.stop_requested() for cb in callbacks if hasattr(cb, "stop_requested"))


def _key(i: int, cb: Any) -> str:
    return f"{i}:{type(cb).__name__}"


def callback_states(callbacks: Sequence[Any]) -> dict[str, Any]:
    """``{"<index>:<class>": state}`` of every callback with a ``state_dict``."""
    return {_key(i, cb): cb.state_dict() for i, cb in enumerate(callbacks) if hasattr(cb, "state_dict")}


def load_callback_states(callbacks: Sequence[Any], states: Mapping[str, Any]) -> None:
    """Give each callback with a ``load_state_dict`` its saved state (callbacks without one are left as built)."""
    for i, cb in enumerate(callbacks):
        if hasattr(cb, "load_state_dict") and _key(i, cb) in states:
            cb.load_state_dict(states[_key(i, cb)])
