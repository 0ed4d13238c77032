"""Typed, validated configuration of a training job (``hwprune train`` / ``hwprune run``).

Loaded from a mapping (a ``--config`` YAML file merged with CLI options); unknown keys and wrong
types are ``ConfigError`` with a did-you-mean. ``to_dict`` is what ``RUN_DIR/config.yaml`` stores.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwprune.base.errors import ConfigError, DataError

__all__ = ["TrainJobConfig", "load_config_file", "load_run_config"]


@dataclass(frozen=True)
class TrainJobConfig:
    """One training job: data + model + profile + method + sparsity target + schedule.

    Epoch counts: ``dense_epochs`` (None: ``epochs``) of plain SGD, ``epochs`` of the method's
    sparse phase, ``finetune_epochs`` (None: ``max(1, ceil(epochs / 3))``) with the mask fixed.
    """

    model: str = "digits_cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None
    train_limit: int | None = None
    profile: str = "auto"
    sparsity: float = 0.5
    method: str = "wgsef"
    epochs: int = 10
    dense_epochs: int | None = None
    finetune_epochs: int | None = None
    batch_size: int = 64
    lr: float = 0.05
    dense_lr: float | None = None
    finetune_lr: float | None = None
    lam: float | None = None  # None: the method's own default (SparseMethod.default_lam)
    eps: float = 0.05
    hs_frac: float = 0.3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    checkpoint: str | None = None
    device: str = "cpu"
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dense_epochs", "finetune_epochs"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{name} must be >= 0, got {v}")
        for name in ("lr", "lam", "weight_decay"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.eps < 1.0:
            raise ConfigError(f"eps must be in [0, 1), got {self.eps}")
        if not 0.0 <= self.hs_frac <= 1.0:
            raise ConfigError(f"hs_frac must be in [0, 1], got {self.hs_frac}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"device must be one of cpu, cuda, auto; got {self.device!r}")

    @property
    def dense_epochs_resolved(self) -> int:
        """Dense-phase epochs."""
        return self.epochs if self.dense_epochs is None else self.dense_epochs

    @property
    def finetune_epochs_resolved(self) -> int:
        """Fine-tune epochs."""
        return max(1, math.ceil(self.epochs / 3)) if self.finetune_epochs is None else self.finetune_epochs

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], source: str = "<config>") -> TrainJobConfig:
        """Build from a mapping; unknown keys and wrong types raise ConfigError naming ``source``."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            key_n = str(key).replace("-", "_")
            if key_n not in fields:
                close = difflib.get_close_matches(key_n, list(fields), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"{source}: unknown key '{key}'{hint}; valid keys: {', '.join(sorted(fields))}")
            kwargs[key_n] = _coerce(key_n, value, fields[key_n].type, source)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def replace(self, **changes: Any) -> TrainJobConfig:
        """Copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)


def _coerce(key: str, value: Any, type_str: Any, source: str) -> Any:
    t = str(type_str)
    if value is None:
        if "None" in t:
            return None
        raise ConfigError(f"{source}: '{key}' must not be null")
    if t.startswith("dict"):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(value).__name__}")
        return dict(value)
    if t.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if t.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if t.startswith("str"):
        if not isinstance(value, str | Path):
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML mapping (``--config FILE``); a malformed file is a ConfigError naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_run_config(run_dir: Path) -> TrainJobConfig:
    """The resolved configuration a run directory was trained with (``RUN_DIR/config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DataError(f"{path}: missing (a run directory written by 'hwprune train' or 'hwprune run')")
    return TrainJobConfig.from_mapping(load_config_file(path), source=str(path))
