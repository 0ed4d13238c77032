"""Profile I/O for :mod:`hwprune.profiles`: value checks, mapping -> profile, dict/YAML dump, files.

Private module (the public names are re-exported by ``hwprune.profiles``). Value checks raise
``FieldError``; the parser re-raises them as one line ``<source>: <field path>: <problem>``.
The dataclasses are imported lazily inside :func:`parse_profile` (``profiles`` imports this module).
"""

from __future__ import annotations

import difflib
import importlib.resources
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hwprune.errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from hwprune.profiles import Granularity, HardwareProfile

__all__ = [
    "FieldError", "describe", "suggest", "check_int", "check_str", "check_choice", "check_bool", "as_tuple",
    "parse_profile", "profile_from_dict", "granularity_to_dict", "profile_to_dict", "profile_to_yaml",
    "bundled_profiles_dir", "list_profiles", "load_profile",
]

_SUFFIXES = (".yaml", ".yml")
_TOP_KEYS = ("schema_version", "name", "description", "device", "bench", "weight_mode", "scope", "rules", "notes")
_DEVICE_KEYS = ("kind", "vendor", "arch", "isa", "min_compute_capability", "description")
_BENCH_KEYS = ("backend", "provider", "precision", "batch_sizes", "warmup", "iters", "repeats", "threads")
_RULE_KEYS = ("match", "granularity", "fallback", "optional")


# ----------------------------------------------------------------------------- value checks
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


def as_tuple(obj: object, name: str) -> tuple:
    """Coerce the list-like ``obj.name`` to a tuple in place (frozen dataclass) and return it."""
    value = getattr(obj, name)
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise FieldError(type(obj).__name__, name, f"expected a list, got {describe(value)}")
    out = tuple(value)
    object.__setattr__(obj, name, out)
    return out


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
    from hwprune.profiles import GRANULARITY_TYPES

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
    return ctx.build(cls, path, **{p: d[p] for p in params})


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
    from hwprune.profiles import SCHEMA_VERSION, BenchSpec, DeviceSpec, HardwareProfile, LayerRule

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
    optional = {k: d[k] for k in ("weight_mode", "scope") if k in d}
    return ctx.build(
        HardwareProfile, "", name=d["name"], schema_version=d["schema_version"],
        description=d.get("description") or "", device=ctx.build(DeviceSpec, "device", **dev),
        rules=tuple(rules), bench=ctx.build(BenchSpec, "bench", **dict(bench or {})),
        notes=d.get("notes") or "", source=source, **optional)


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
    return {"schema_version": p.schema_version, "name": p.name, "description": p.description,
            "device": device, "bench": bench, "weight_mode": p.weight_mode, "scope": p.scope,
            "rules": rules, "notes": p.notes}


def profile_to_yaml(p: HardwareProfile) -> str:
    """YAML text of :func:`profile_to_dict` (key order kept); loads back to an equal profile."""
    return yaml.safe_dump(profile_to_dict(p), sort_keys=False, default_flow_style=None, width=100)


# ----------------------------------------------------------------------------- files
def bundled_profiles_dir() -> Traversable:
    """Directory of the bundled profiles (package data ``hwprune.hardware_profiles``).

    Falls back to the source checkout's ``hardware_profiles/`` when hwprune is not installed.
    """
    try:
        return importlib.resources.files("hwprune.hardware_profiles")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "hardware_profiles"


def _bundled_files() -> dict[str, Traversable]:
    root = bundled_profiles_dir()
    return {e.name.rsplit(".", 1)[0]: e for e in root.iterdir() if e.is_file() and e.name.endswith(_SUFFIXES)}


def list_profiles() -> list[str]:
    """Names of the bundled profiles, sorted."""
    return sorted(_bundled_files())


def _load_text(text: str, source: str, default_name: str) -> HardwareProfile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: {where}invalid YAML: {' '.join(str(problem).split())}") from None
    if isinstance(data, Mapping) and "name" not in data:
        data = {**data, "name": default_name}
    return parse_profile(data, source)


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load a bundled profile by name (e.g. ``"x86-avx2-ort"``) or a YAML file by path.

    A string is read as a path if it ends in .yaml/.yml or contains a path separator; a bare
    bundled name never picks up a same-named file in the working directory. A file without a
    ``name`` key takes its file stem as name.
    """
    bundled = _bundled_files()
    valid = ", ".join(sorted(bundled))
    if isinstance(name_or_path, Path):
        path = name_or_path
    elif not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError(f"profile must be a bundled name or a .yaml path, got {name_or_path!r}; "
                          f"bundled profiles: {valid}")
    elif name_or_path.endswith(_SUFFIXES) or "/" in name_or_path or "\\" in name_or_path:
        path = Path(name_or_path)
    elif name_or_path in bundled:
        entry = bundled[name_or_path]
        return _load_text(entry.read_text(encoding="utf-8"), str(entry), name_or_path)
    elif Path(name_or_path).is_file():
        path = Path(name_or_path)
    else:
        raise ConfigError(f"unknown profile {name_or_path!r}{suggest(name_or_path, bundled)}; "
                          f"bundled profiles: {valid}; or pass a path to a .yaml file")
    if not path.exists():
        raise ConfigError(f"profile file not found: {path}; bundled profiles: {valid}")
    if path.is_dir():
        raise ConfigError(f"profile path is a directory, not a .yaml file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read profile: {' '.join(str(exc).split())}") from None
    return _load_text(text, str(path), path.stem)
