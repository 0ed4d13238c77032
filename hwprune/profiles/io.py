"""Profile files: the bundled profiles directory, the user's profile directory, listing, loading by name or path.

The user's profile directory (where ``hwprune profile calibrate`` writes by default) is
``$HWPRUNE_PROFILE_DIR`` if set, else ``$XDG_CONFIG_HOME/hwprune/profiles``, else
``~/.config/hwprune/profiles``. Its ``*.yaml`` profiles load by name like bundled ones (a bundled
name wins) and take part in ``hwprune select`` and ``--profile auto``.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from hwprune.base.errors import ConfigError
from hwprune.profiles.checks import suggest
from hwprune.profiles.parse import parse_profile
from hwprune.profiles.schema import HardwareProfile

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["bundled_profiles_dir", "user_profiles_dir", "list_profiles", "list_user_profiles", "load_profile",
           "load_user_profiles"]

log = logging.getLogger(__name__)

_SUFFIXES = (".yaml", ".yml")


def user_profiles_dir() -> Path:
    """``$HWPRUNE_PROFILE_DIR``, else ``$XDG_CONFIG_HOME/hwprune/profiles``, else ``~/.config/hwprune/profiles``."""
    env = os.environ.get("HWPRUNE_PROFILE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".config") / "hwprune" / "profiles"


def _user_files() -> dict[str, Path]:
    root = user_profiles_dir()
    if not root.is_dir():
        return {}
    return {p.name.rsplit(".", 1)[0]: p for p in sorted(root.iterdir()) if p.is_file() and p.name.endswith(_SUFFIXES)}


def list_user_profiles() -> list[Path]:
    """YAML files in :func:`user_profiles_dir` (sorted; empty when the directory does not exist)."""
    return list(_user_files().values())


def load_user_profiles() -> list[HardwareProfile]:
    """Every valid profile in the user's profile directory; invalid files are skipped with a warning."""
    out = []
    for path in list_user_profiles():
        try:
            out.append(load_profile(path))
        except ConfigError as exc:
            log.warning("skipping invalid user profile %s: %s", path, exc)
    return out


def bundled_profiles_dir() -> Traversable:
    """Directory of the bundled profiles (package data ``hwprune.hardware_profiles``).

    Falls back to the source checkout's ``hardware_profiles/`` when hwprune is not installed.
    """
    try:
        return importlib.resources.files("hwprune.hardware_profiles")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "hardware_profiles"


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
    elif name_or_path in (user := _user_files()):
        path = user[name_or_path]
    elif Path(name_or_path).is_file():
        path = Path(name_or_path)
    else:
        raise ConfigError(f"unknown profile {name_or_path!r}{suggest(name_or_path, bundled)}; "
                          f"bundled profiles: {valid}; user profiles in {user_profiles_dir()}: "
                          f"{', '.join(sorted(user)) or 'none'}; or pass a path to a .yaml file")
    if not path.exists():
        raise ConfigError(f"profile file not found: {path}; bundled profiles: {valid}")
    if path.is_dir():
        raise ConfigError(f"profile path is a directory, not a .yaml file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read profile: {' '.join(str(exc).split())}") from None
    return _load_text(text, str(path), path.stem)
