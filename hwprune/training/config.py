"""Typed, validated configuration of a training job (``hwprune train`` / ``hwprune run``).

Loaded from a mapping (a ``--config`` YAML file merged with CLI options); unknown keys and wrong
types are ``ConfigError`` with a did-you-mean. ``to_dict`` is the ``train`` section of
``RUN_DIR/config.yaml`` (``hwprune.training.runconfig.RunConfig``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwprune.base.checks import BLOCK_ORDERS, check_sparsity
from hwprune.base.errors import ConfigError

__all__ = ["TrainJobConfig", "load_config_file", "load_config_sections", "MAX_VAL_FRACTION"]

MAX_VAL_FRACTION = 0.5  # a validation split larger than half the training data is a typo, not a protocol
# Keys of earlier versions that moved: a config file using them gets a message saying where to.
_MOVED = {"eps": "method_options: {eps: ...} (an option of method wgsef)",
          "hs_frac": "method_options: {hs_frac: ...} (an option of method wgsef)"}


@dataclass(frozen=True)
class TrainJobConfig:
    """One training job: data + model + profile + method + sparsity target + schedule.

    Epoch counts: ``dense_epochs`` (None: ``epochs``) of plain SGD, ``epochs`` of the method's
    sparse phase, ``finetune_epochs`` (None: ``max(1, ceil(epochs / 3))``) with the mask fixed.

    Data protocol: ``data_seed`` alone draws the ``train_limit`` subset, the validation split and
    (digits, mnist-5k, imagefolder) the train/test split, so repeating a job with another ``seed``
    (initialisation, shuffling, dropout) keeps the data. ``val_fraction`` of the training images
    (stratified) is held out for the per-epoch evaluation; the test split is evaluated once, at the
    end of the job. ``compact_finetune``: surgery right after the top-k projection and the fine-tune
    on the compact model (False: fine-tune the masked full-width model; ``hwprune prune`` then does
    the surgery). ``method_options``: the method's own options (``SparseMethod.options_type``).
    ``bn_recalibrate``: re-estimate BatchNorm statistics on training images after the projection
    (``hwprune.training.bnrecal``); ``distill``: add a dense-teacher distillation term
    (``distill_alpha``, ``distill_temperature``; ``hwprune.training.distill``) to the fine-tune.
    ``block_order``: which channels share a channel block once the dense model is trained:
    ``norm`` (sorted by magnitude, the default) or ``index`` (consecutive channels; see
    ``hwprune.groups.channels``).
    ``rewind`` (diagnosis, config files only): after the projection, reset the kept groups to the
    dense model's weights (the selection is kept).
    ``model_path``: directories (``os.pathsep``-separated) put on ``sys.path`` before a
    ``package.module:callable`` model is imported. :meth:`portable` makes the paths absolute, as
    ``config.yaml`` records them (a run works from any directory).
    """

    model: str = "digits_cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    model_path: str | None = None
    data: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None
    train_limit: int | None = None
    data_seed: int = 0
    val_fraction: float = 0.1
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
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    checkpoint: str | None = None
    device: str = "cpu"
    compact_finetune: bool = True
    method_options: dict[str, Any] = field(default_factory=dict)
    bn_recalibrate: bool = True
    block_order: str = "norm"
    rewind: bool = False
    distill: bool = False
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dense_epochs", "finetune_epochs"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{name} must be >= 0, got {v}")
        for name in ("lr", "lam", "weight_decay", "dense_lr", "finetune_lr"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.val_fraction <= MAX_VAL_FRACTION:
            raise ConfigError(f"val_fraction must be in [0, {MAX_VAL_FRACTION}], got {self.val_fraction}")
        for name in ("seed", "data_seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"device must be one of cpu, cuda, auto; got {self.device!r}")
        if self.block_order not in BLOCK_ORDERS:
            raise ConfigError(f"block_order must be one of {', '.join(BLOCK_ORDERS)}; got {self.block_order!r}")
        if not self.distill_alpha >= 0 or not self.distill_temperature > 0:
            raise ConfigError(f"distill_alpha must be >= 0 and distill_temperature > 0, got "
                              f"{self.distill_alpha}, {self.distill_temperature}")

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
            if key_n in _MOVED:
                raise ConfigError(f"{source}: '{key}' is no longer a job key; use {_MOVED[key_n]}")
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

    def portable(self) -> TrainJobConfig:
        """Copy with ``data_dir``, ``checkpoint`` and ``model_path`` absolute (``~`` expanded).

        A ``package.module:callable`` model without a ``model_path`` records the working directory
        (where the CLI imports it from), so later steps run elsewhere still find the module.
        """
        def absolute(p: str | None) -> str | None:
            return None if p is None else str(Path(p).expanduser().absolute())

        model_path = self.model_path
        if model_path is None and ":" in self.model:
            model_path = str(Path.cwd())
        if model_path is not None:
            model_path = os.pathsep.join(str(absolute(d)) for d in model_path.split(os.pathsep) if d)
        return self.replace(data_dir=absolute(self.data_dir), checkpoint=absolute(self.checkpoint),
                            model_path=model_path or None)


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
    if t.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
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


def load_config_sections(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(job keys, pipeline keys)`` of a ``--config FILE``; malformed YAML is one line with line and column.

    A plain file is a mapping of job (and command option) keys: ``({...}, {})``. A run directory's
    ``config.yaml`` (it has ``run_format``) gives its ``train`` and ``pipeline`` sections, so
    ``hwprune train --config RUN/config.yaml`` repeats that job.
    """
    from hwprune.base.files import read_yaml

    path = Path(path)
    data = read_yaml(path, what="config file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values at the top level, "
                          f"got {type(data).__name__}")
    if "run_format" in data:
        train, pipeline = data.get("train"), data.get("pipeline") or {}
        if not isinstance(train, dict) or not isinstance(pipeline, dict):
            raise ConfigError(f"{path}: a run configuration needs 'train' and 'pipeline' mappings")
        return dict(train), dict(pipeline)
    return data, {}


def load_config_file(path: Path) -> dict[str, Any]:
    """The job keys of a ``--config FILE`` (:func:`load_config_sections`' first part)."""
    return load_config_sections(path)[0]
