"""Calibration metadata of a profile measured on a device (``hwprune profile calibrate``).

A calibrated profile carries a ``calibration:`` block: the runtime it was measured on (backend,
provider, precision, threads, batch), the measured width staircase per layer kind (``blocks``: the
multiple at which latency steps, e.g. ``{conv: 16, depthwise: 8, linear: 16, attention_mlp: 16}``),
the kinds whose measurement was ambiguous, the machine (CPU model, cores, arch, GPU) and library
versions, when it was measured, the relative spread of the timings and the file holding the curves.
``hwprune.profiles.machine`` matches a calibrated profile only on the machine it was measured on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hwprune.profiles.checks import FieldError, as_tuple, check_int, check_str, describe

__all__ = ["LAYER_KINDS", "CalibrationInfo", "calibration_from_dict", "calibration_to_dict", "CALIBRATION_KEYS"]

LAYER_KINDS: tuple[str, ...] = ("conv", "depthwise", "linear", "attention_mlp")
CALIBRATION_KEYS: tuple[str, ...] = ("backend", "provider", "precision", "threads", "batch", "blocks", "ambiguous",
                                     "machine", "versions", "created", "curves", "spread")
_MACHINE_KEYS = ("cpu_model", "cores", "arch", "gpu")


@dataclass(frozen=True)
class CalibrationInfo:
    """Where and how a profile's block sizes were measured (see the module docstring).

    ``blocks`` and ``versions`` are stored as sorted ``(name, value)`` pairs so the dataclass stays
    hashable; :meth:`block` looks one kind up.
    """

    backend: str
    provider: str
    precision: str
    threads: int
    batch: int
    blocks: tuple[tuple[str, int], ...]
    cpu_model: str
    cores: int
    arch: str
    gpu: str | None = None
    ambiguous: tuple[str, ...] = ()
    versions: tuple[tuple[str, str], ...] = ()
    created: str = ""
    curves: str = ""
    spread: float = 0.0

    def __post_init__(self) -> None:
        for name in ("backend", "provider", "precision", "cpu_model", "arch"):
            check_str(self, name, nonempty=True)
        check_int(self, "threads", 0)
        check_int(self, "batch", 1)
        check_int(self, "cores", 1)
        blocks = as_tuple(self, "blocks")
        if not blocks:
            raise FieldError("CalibrationInfo", "blocks", "must give at least one layer kind")
        for pair in blocks:
            if (not isinstance(pair, tuple) or len(pair) != 2 or pair[0] not in LAYER_KINDS
                    or isinstance(pair[1], bool) or not isinstance(pair[1], int) or pair[1] < 1):
                raise FieldError("CalibrationInfo", "blocks", f"expected {{kind: block >= 1}} with kinds "
                                 f"{', '.join(LAYER_KINDS)}; got {describe(pair)}")
        object.__setattr__(self, "blocks", tuple(sorted(blocks)))
        for kind in as_tuple(self, "ambiguous"):
            if kind not in LAYER_KINDS:
                raise FieldError("CalibrationInfo", "ambiguous", f"unknown layer kind {kind!r}; valid: "
                                 f"{', '.join(LAYER_KINDS)}")
        object.__setattr__(self, "versions", tuple(sorted((str(k), str(v)) for k, v in as_tuple(self, "versions"))))
        if self.gpu is not None:
            check_str(self, "gpu")
        check_str(self, "created")
        check_str(self, "curves")
        if isinstance(self.spread, bool) or not isinstance(self.spread, (int, float)) or not self.spread >= 0:
            raise FieldError("CalibrationInfo", "spread", f"expected a number >= 0, got {describe(self.spread)}")

    def block(self, kind: str, default: int = 1) -> int:
        """The measured block of layer ``kind`` (``default`` when that kind was not measured)."""
        return dict(self.blocks).get(kind, default)

    def matches_machine(self, cpu_model: str, cores: int, gpu: str | None = None) -> bool:
        """True on the machine this was measured on (same CPU model and core count, same GPU for cuda)."""
        same_gpu = self.provider != "cuda" or self.gpu == gpu
        return self.cpu_model == cpu_model and self.cores == int(cores) and same_gpu


def calibration_from_dict(d: Mapping[str, Any]) -> CalibrationInfo:
    """Build from the YAML mapping (``machine`` nested); raises ``FieldError`` naming the field."""
    for key in d:
        if key not in CALIBRATION_KEYS:
            raise FieldError("calibration", str(key), f"unknown key; valid keys: {', '.join(CALIBRATION_KEYS)}")
    machine = d.get("machine") or {}
    if not isinstance(machine, Mapping):
        raise FieldError("calibration", "machine", f"expected a mapping, got {describe(machine)}")
    for key in machine:
        if key not in _MACHINE_KEYS:
            raise FieldError("calibration", f"machine.{key}", f"unknown key; valid keys: {', '.join(_MACHINE_KEYS)}")
    for key in ("blocks", "versions"):
        if not isinstance(d.get(key) or {}, Mapping):
            raise FieldError("calibration", key, f"expected a mapping, got {describe(d.get(key))}")
    missing = [k for k in ("backend", "provider", "precision", "threads", "batch", "blocks") if k not in d]
    missing += [f"machine.{k}" for k in ("cpu_model", "cores", "arch") if k not in machine]
    if missing:
        raise FieldError("calibration", missing[0], "missing required key")
    return CalibrationInfo(
        backend=d["backend"], provider=d["provider"], precision=d["precision"], threads=d["threads"],
        batch=d["batch"], blocks=tuple((dict(d["blocks"])).items()), cpu_model=machine["cpu_model"],
        cores=machine["cores"], arch=machine["arch"], gpu=machine.get("gpu"),
        ambiguous=tuple(d.get("ambiguous") or ()), versions=tuple((dict(d.get("versions") or {})).items()),
        created=str(d.get("created") or ""), curves=str(d.get("curves") or ""), spread=d.get("spread", 0.0))


def calibration_to_dict(c: CalibrationInfo) -> dict[str, Any]:
    """Plain dict (YAML-ready) that :func:`calibration_from_dict` turns back into an equal object."""
    return {"backend": c.backend, "provider": c.provider, "precision": c.precision, "threads": c.threads,
            "batch": c.batch, "blocks": dict(c.blocks), "ambiguous": list(c.ambiguous),
            "machine": {"cpu_model": c.cpu_model, "cores": c.cores, "arch": c.arch, "gpu": c.gpu},
            "versions": dict(c.versions), "created": c.created, "curves": c.curves, "spread": float(c.spread)}
