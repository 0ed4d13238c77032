"""Mapping (parsed YAML) -> ``HardwareProfile`` with one-line errors, and profile -> dict / YAML."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import yaml

from hwprune.base.errors import ConfigError
from hwprune.profiles.calibration import calibration_from_dict, calibration_to_dict
from hwprune.profiles.checks import FieldError, describe, suggest
from hwprune.profiles.schema import (
    GRANULARITY_TYPES,
    SCHEMA_VERSION,
    BenchSpec,
    DeviceSpec,
    Granularity,
    HardwareProfile,
    LayerRule,
)

__all__ = ["parse_profile", "profile_from_dict", "granularity_to_dict", "profile_to_dict", "profile_to_yaml"]

_TOP_KEYS = ("schema_version", "name", "description", "device", "bench", "weight_mode", "scope", "rules", "notes",
             "calibration")
_DEVICE_KEYS = ("kind", "vendor", "arch", "isa", "min_compute_capability", "description")
_BENCH_KEYS = ("backend", "provider", "precision", "batch_sizes", "warmup", "iters", "repeats", "threads")
_RULE_KEYS = ("match", "granularity", "fallback", "optional")


# ----------------------------------------------------------------------------- mapping -> profile
class _Ctx:
    """Error factory bound to one source (file name or ``<dict>``)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, detail: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path + ': ' if path else ''}{detail}")

    def mapping(self, value: Any, path: str, what: str = "a mapping") -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(path, f"expected {what}, got {describe(value)}")
        return value

    def keys(self, d: Mapping[str, Any], path: str, valid: Sequence[str], required: Sequence[str] = ()) -> None:
        for key in d:
            if key not in valid:
                raise self.error(path, f"unknown key {key!r}{suggest(str(key), valid)}; valid keys: {', '.join(valid)}")
        for key in required:
            if key not in d:
                raise self.error(path, f"missing required key '{key}'")

    def build(self, cls: type, path: str, **kwargs: Any) -> Any:
        try:
            return cls(**kwargs)
        except FieldError as exc:
            raise self.error(f"{path}.{exc.field}" if path else exc.field, exc.detail) from None


def _granularity(ctx: _Ctx, value: Any, path: str) -> Granularity:

    kinds = tuple(GRANULARITY_TYPES)
    if isinstance(value, str):
        value = {"kind": value}
    d = ctx.mapping(value, path, "a mapping like {kind: channel_block, block: 8} or a kind name")
    if "kind" not in d:
        raise ctx.error(path, f"missing required key 'kind'; valid kinds: {', '.join(kinds)}")
    kind = d["kind"]
    if not isinstance(kind, str) or kind not in GRANULARITY_TYPES:
        raise ctx.error(f"{path}.kind", f"unknown granularity {kind!r}{suggest(str(kind), kinds)}; "
                        f"valid kinds: {', '.join(kinds)}")
    cls = GRANULARITY_TYPES[kind]
    params = tuple(f.name for f in fields(cls))
    ctx.keys(d, path, ("kind", *params), required=params)
    gran: Granularity = ctx.build(cls, path, **{p: d[p] for p in params})
    return gran


def _compute_capability(value: Any) -> Any:
    """Accept unquoted YAML ``8.0`` / ``8``; anything else goes to DeviceSpec's own check."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return f"{value}.0"
    return repr(value) if isinstance(value, float) else value


def parse_profile(data: Any, source: str = "<dict>") -> HardwareProfile:
    """Validate ``data`` (a mapping, e.g. parsed YAML) and build a ``HardwareProfile``.

    Raises:
        ConfigError: one line ``<source>: <field path>: <problem>`` for the first problem found.
    """
    ctx = _Ctx(source)
    d = ctx.mapping(data, "", "a mapping at the top level")
    if "schema_version" not in d:
        raise ctx.error("", f"missing required key 'schema_version' (current: {SCHEMA_VERSION})")
    version = d["schema_version"]
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise ctx.error("schema_version", f"unsupported schema_version {version!r}; this hwprune reads "
                        f"schema_version {SCHEMA_VERSION}")
    ctx.keys(d, "", _TOP_KEYS, required=("name", "device", "rules"))
    raw_rules = d["rules"]
    if isinstance(raw_rules, (str, bytes, Mapping)) or not isinstance(raw_rules, Sequence):
        raise ctx.error("rules", f"expected a list of rules, got {describe(raw_rules)}")
    rules = []
    for i, raw in enumerate(raw_rules):
        path = f"rules[{i}]"
        r = ctx.mapping(raw, path)
        ctx.keys(r, path, _RULE_KEYS, required=("match", "granularity"))
        gran = _granularity(ctx, r["granularity"], f"{path}.granularity")
        fb = None if r.get("fallback") is None else _granularity(ctx, r["fallback"], f"{path}.fallback")
        rules.append(ctx.build(LayerRule, path, match=r["match"], granularity=gran, fallback=fb,
                               optional=r.get("optional", False)))
    dev = dict(ctx.mapping(d["device"], "device"))
    ctx.keys(dev, "device", _DEVICE_KEYS, required=("kind",))
    dev.setdefault("vendor", "any")
    dev.setdefault("arch", "any")
    dev["isa"] = () if dev.get("isa") is None else dev["isa"]
    if "min_compute_capability" in dev:
        dev["min_compute_capability"] = _compute_capability(dev["min_compute_capability"])
    bench = d.get("bench")
    if bench is not None:
        ctx.keys(ctx.mapping(bench, "bench"), "bench", _BENCH_KEYS)
    optional: dict[str, Any] = {k: d[k] for k in ("weight_mode", "scope") if k in d}
    if d.get("calibration") is not None:
        cal = ctx.mapping(d["calibration"], "calibration")
        try:
            optional["calibration"] = calibration_from_dict(cal)
        except FieldError as exc:
            raise ctx.error(f"calibration.{exc.field}", exc.detail) from None
    profile: HardwareProfile = ctx.build(
        HardwareProfile, "", name=d["name"], schema_version=d["schema_version"],
        description=d.get("description") or "", device=ctx.build(DeviceSpec, "device", **dev),
        rules=tuple(rules), bench=ctx.build(BenchSpec, "bench", **dict(bench or {})),
        notes=d.get("notes") or "", source=source, **optional)
    return profile


def profile_from_dict(d: Mapping[str, Any], source: str = "<dict>") -> HardwareProfile:
    """Validate a mapping (parsed YAML) and build a profile (see :func:`parse_profile`)."""
    return parse_profile(d, source)


# ----------------------------------------------------------------------------- profile -> dict / YAML
def granularity_to_dict(g: Granularity) -> dict[str, Any]:
    """``{"kind": ..., <params>}`` for a granularity."""
    return {"kind": g.kind, **{f.name: getattr(g, f.name) for f in fields(g)}}


def profile_to_dict(p: HardwareProfile) -> dict[str, Any]:
    """Plain dict (YAML/JSON-ready) that :func:`profile_from_dict` turns back into an equal profile."""
    rules = []
    for r in p.rules:
        rd: dict[str, Any] = {"match": r.match, "granularity": granularity_to_dict(r.granularity)}
        if r.fallback is not None:
            rd["fallback"] = granularity_to_dict(r.fallback)
        if r.optional:
            rd["optional"] = True
        rules.append(rd)
    dev = p.device
    device: dict[str, Any] = {"kind": dev.kind, "vendor": dev.vendor, "arch": dev.arch, "isa": list(dev.isa)}
    if dev.min_compute_capability is not None:
        device["min_compute_capability"] = dev.min_compute_capability
    if dev.description:
        device["description"] = dev.description
    b = p.bench
    bench = {"backend": b.backend, "provider": b.provider, "precision": b.precision,
             "batch_sizes": list(b.batch_sizes), "warmup": b.warmup, "iters": b.iters,
             "repeats": b.repeats, "threads": b.threads}
    out = {"schema_version": p.schema_version, "name": p.name, "description": p.description,
           "device": device, "bench": bench, "weight_mode": p.weight_mode, "scope": p.scope,
           "rules": rules, "notes": p.notes}
    if p.calibration is not None:
        out["calibration"] = calibration_to_dict(p.calibration)
    return out


def profile_to_yaml(p: HardwareProfile) -> str:
    """YAML text of :func:`profile_to_dict` (key order kept); loads back to an equal profile."""
    return yaml.safe_dump(profile_to_dict(p), sort_keys=False, default_flow_style=None, width=100)


