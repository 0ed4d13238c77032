"""The method interface, each method's own options, and the registry.

A method turns a trained dense model into one whose removable groups are exactly zero, with at
most ``k[s]`` nonzero groups per scope after the runner's final top-k projection. It does so by
handing the trainer a ``SparsePhase`` (optimiser + optional extra loss + callbacks) and, after the
phase, ``finalize`` (e.g. SSR masks the groups whose auxiliary rows are zero).

Adding a method is one file: a ``MethodOptions`` subclass (a frozen dataclass: its fields are the
method's options, with their defaults, validated in ``__post_init__``) and a ``SparseMethod``
subclass naming it in ``options_type``, decorated with ``@register_method``. The job passes the
shared hyper-parameters (``MethodConfig``: lr, lam, momentum, weight decay) and the parsed options
(``cfg.options``, from the job's ``method_options`` mapping).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups.groupset import GroupSet

__all__ = ["MethodOptions", "MethodConfig", "SparsePhase", "SparseMethod", "register_method", "get_method",
           "list_methods"]

OptionsT = TypeVar("OptionsT", bound="MethodOptions")


@dataclass(frozen=True)
class MethodOptions:
    """Base of a method's own options: subclass it as a frozen dataclass (no fields here: no options)."""

    @classmethod
    def from_mapping(cls: type[OptionsT], values: Mapping[str, Any], *, method: str) -> OptionsT:
        """Build from a ``method_options`` mapping; unknown keys and wrong types are ``ConfigError``.

        Args:
            values: option name -> value (YAML scalars, lists, mappings).
            method: the method's name, for the messages.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                close = difflib.get_close_matches(name, list(fields), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                valid = ", ".join(sorted(fields)) or "none"
                raise ConfigError(f"method '{method}': unknown option '{key}'{hint}; valid options: {valid}")
            kwargs[name] = _coerce(method, name, value, hints[name])
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"method '{method}': {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every option (the resolved values a run records)."""
        return dataclasses.asdict(self)


_CHECKS: dict[Any, Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    dict: lambda v: isinstance(v, Mapping),
    list: lambda v: isinstance(v, list | tuple),
}


def _coerce(method: str, name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's annotation (bool, int, float, str, dict, list and unions of them)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    if value is None:
        if union and len(members) < len(typing.get_args(hint)):
            return None
        raise ConfigError(f"method '{method}': option '{name}' must not be null")
    for member in members:
        origin = typing.get_origin(member) or member
        check = _CHECKS.get(origin)
        if check is None:
            return value  # a type this parser does not know: the dataclass's own check decides
        if check(value):
            return {float: float, dict: dict, list: list}.get(origin, lambda v: v)(value)
    expected = " or ".join(getattr(typing.get_origin(m) or m, "__name__", str(m)) for m in members)
    raise ConfigError(f"method '{method}': option '{name}' must be {expected}, got {value!r}")


@dataclass(frozen=True)
class MethodConfig:
    """What the job passes to every method: the shared hyper-parameters and the method's options.

    Attributes:
        lr: learning rate of the sparse phase.
        lam: regularisation strength (WGSEF lambda, group-lasso lambda, SSR lambda per layer).
        momentum: SGD momentum.
        weight_decay: weight decay of ungrouped parameters.
        options: the method's own ``MethodOptions`` (``SparseMethod.parse_options``).
    """

    lr: float = 0.05
    lam: float = 5e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    options: MethodOptions = field(default_factory=MethodOptions)


@dataclass
class SparsePhase:
    """What a method hands to ``train.fit`` for its sparse phase."""

    optimizer: torch.optim.Optimizer
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None
    callbacks: list[Any] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


class SparseMethod(ABC):
    """A sparsification method acting on the groups of a ``GroupSet``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    trains: ClassVar[bool] = True  # False: no sparse training phase (one-shot methods)
    default_lam: ClassVar[float] = 5e-3  # lambda used when the job does not set one
    options_type: ClassVar[type[MethodOptions]] = MethodOptions  # this method's options (default: none)

    def parse_options(self, values: Mapping[str, Any]) -> MethodOptions:
        """The method's options from a ``method_options`` mapping (defaults for missing keys)."""
        return self.options_type.from_mapping(values, method=self.name)

    def options_of(self, cfg: MethodConfig, kind: type[OptionsT]) -> OptionsT:
        """``cfg.options`` as this method's options type (the defaults when the base, empty options are given)."""
        if isinstance(cfg.options, kind):
            return cfg.options
        if type(cfg.options) is MethodOptions:
            return kind()
        raise ConfigError(f"method '{self.name}' got options of type {type(cfg.options).__name__}, "
                          f"expected {kind.__name__}")

    @abstractmethod
    def prepare(
        self,
        model: nn.Module,
        groupset: GroupSet,
        k: torch.Tensor,
        cfg: MethodConfig,
        *,
        total_steps: int,
    ) -> SparsePhase:
        """Build the optimiser/extra loss/callbacks of the sparse phase (``total_steps`` SGD steps)."""

    def finalize(self, model: nn.Module, groupset: GroupSet, k: torch.Tensor,
                 phase: SparsePhase | None) -> dict[str, Any]:
        """After the sparse phase: make the method's selection exact zeros. Returns info for the log."""
        return {}


_REGISTRY: dict[str, type[SparseMethod]] = {}


def register_method(cls: type[SparseMethod]) -> type[SparseMethod]:
    """Class decorator registering a method under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def list_methods() -> dict[str, str]:
    """Registered method names -> one-line summaries (sorted by name)."""
    return {n: _REGISTRY[n].summary for n in sorted(_REGISTRY)}


def get_method(name: str) -> SparseMethod:
    """Instantiate a registered method; unknown names raise ConfigError listing the valid ones."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown method '{name}'{hint}; valid methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()
