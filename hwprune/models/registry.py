"""Model registry (timm style): ``register_model`` / ``list_models`` / ``create_model``.

Every model built by :func:`create_model` carries ``model.hwprune_spec = {"name": ..., "kwargs":
{...}}`` (JSON-friendly) so that :func:`model_from_spec` can re-create it from a run directory.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from torch import nn

from hwprune.base.errors import ConfigError

__all__ = ["register_model", "list_models", "create_model", "model_from_spec", "is_model", "model_defaults"]

_BASE_ARGS = ("num_classes", "in_channels", "input_size")
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str) -> Callable[[F], F]:
    """Decorator registering a builder ``fn(*, num_classes, in_channels, input_size, **kw) -> nn.Module``."""
    key = name.strip().lower()
    if not key or ":" in key:
        raise ConfigError(f"invalid model name {name!r}: must be non-empty and contain no ':'")

    def decorator(fn: F) -> F:
        old = _REGISTRY.get(key)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ConfigError(f"model {key!r} is already registered by {old.__module__}.{old.__qualname__}")
        _REGISTRY[key] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def is_model(name: str) -> bool:
    """True when ``name`` is a registered model name."""
    return name.strip().lower() in _REGISTRY


def _resolve(name: str) -> Callable[..., Any]:
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import module {module_name!r} for model {name!r}: {exc}") from exc
        fn = getattr(module, attr, None)
        if fn is None or not callable(fn):
            raise ConfigError(f"model {name!r}: module {module_name!r} has no callable {attr!r}")
        return cast(Callable[..., Any], fn)
    key = name.strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise ConfigError(
        f"unknown model {name!r}{hint}; valid models: {', '.join(list_models())} "
        "(or 'package.module:callable')"
    )


def model_defaults(name: str) -> dict[str, Any]:
    """The builder's own defaults of ``num_classes`` / ``in_channels`` / ``input_size`` (those it declares)."""
    try:
        params = inspect.signature(_resolve(name)).parameters
    except (TypeError, ValueError):
        return {}
    return {a: p.default for a in _BASE_ARGS if (p := params.get(a)) is not None and p.default is not p.empty}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _check_positive_int(arg: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"create_model: {arg} must be a positive integer, got {value!r}")


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by registered name or ``"package.module:callable"``.

    Args:
        name: a name from :func:`list_models` or ``"package.module:callable"``.
        num_classes: output logits per sample.
        in_channels: input channels C of ``(N, C, input_size, input_size)`` images.
        input_size: spatial size H = W the model is built for (flatten heads depend on it).
        **kwargs: model-specific options (e.g. ``width``, ``depth``, ``hidden``, ``bn``).

    Returns:
        The model, with ``hwprune_spec = {"name": name, "kwargs": {...}}`` attached.

    Raises:
        ConfigError: unknown name, unimportable callable, or an argument the builder rejects.
    """
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels), ("input_size", input_size)):
        _check_positive_int(arg, value)
    fn = _resolve(name)
    try:
        params: Mapping[str, inspect.Parameter] = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: pass only the user's kwargs
        params = {}
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    accepted = {n for n, p in params.items() if p.kind in named}
    if not params:
        accepted = set(kwargs)
    for arg in kwargs:
        if not has_var_kw and arg not in accepted:
            valid = sorted(accepted - set(_BASE_ARGS))
            raise ConfigError(
                f"model {name!r} does not accept argument {arg!r}; valid extra arguments: {', '.join(valid) or 'none'}"
            )
    call_kwargs: dict[str, Any] = {}
    base = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    for arg, value in base.items():
        if has_var_kw or arg in accepted:
            call_kwargs[arg] = value
    call_kwargs.update(kwargs)
    try:
        model = fn(**call_kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad arguments {sorted(call_kwargs)}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, expected torch.nn.Module")
    spec_name = name if ":" in name else name.strip().lower()
    setattr(model, "hwprune_spec", {"name": spec_name, "kwargs": _jsonable({**base, **kwargs})})  # noqa: B010
    return model


def model_from_spec(spec: Mapping[str, Any] | str) -> nn.Module:
    """Re-create a model from ``model.hwprune_spec`` (a mapping or its JSON string)."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model spec is not valid JSON: {exc}") from exc
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError("model spec must be a mapping with keys 'name' and 'kwargs'")
    kwargs = dict(spec.get("kwargs") or {})
    return create_model(str(spec["name"]), **kwargs)
