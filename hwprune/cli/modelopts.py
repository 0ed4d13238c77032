"""The model-from-options of the commands that take a bare registry model (``--model`` and its input).

``model_input_options`` adds ``--input-size``, ``--in-channels``, ``--num-classes``, ``--data``,
``--data-dir`` and ``--model-path`` to a command and hands it the resolved input: options given
explicitly, else the shape and classes of ``--data`` (a dataset), else the defaults the model's
builder declares (``num_classes``, ``in_channels``, ``input_size`` in its signature), else
3 x 32 x 32 and 10 classes. ``model_from_options`` builds the model and its example input.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import torch

__all__ = ["model_input_options", "model_from_options", "resolve_input", "EXAMPLE_SEED", "FALLBACK_INPUT"]

EXAMPLE_SEED = 0  # the example input is standard normal from this seed (tracing, export parity)
FALLBACK_INPUT = {"num_classes": 10, "in_channels": 3, "input_size": 32}  # when neither data nor model says
_MODEL_KEYS = ("model_name", "model")  # the commands' parameter names of --model / --measure


def resolve_input(model: str | None, *, input_size: int | None = None, in_channels: int | None = None,
                  num_classes: int | None = None, data: str | None = None, data_dir: Path | None = None,
                  model_path: str | None = None) -> dict[str, int]:
    """``{num_classes, in_channels, input_size}``: explicit values > ``data``'s > the builder's defaults > fallback.

    Raises:
        ConfigError / DataError: an unknown dataset or model, or unreadable data files.
    """
    from hwprune.base.optional import add_import_path

    add_import_path(model_path)
    out = dict(FALLBACK_INPUT)
    if model is not None:
        from hwprune.models.registry import model_defaults

        out.update({k: int(v) for k, v in model_defaults(model).items() if isinstance(v, int)})
    if data is not None:
        from hwprune.data import load_dataset

        bundle = load_dataset(data, data_dir=data_dir, image_size=input_size)
        out.update(num_classes=bundle.num_classes, in_channels=bundle.in_channels, input_size=bundle.image_size)
    given = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    out.update({k: v for k, v in given.items() if v is not None})
    return out


def model_input_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with the input options; it gets resolved ``input_size``, ``in_channels``, ``num_classes``."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        data, data_dir, paths = kwargs.pop("data"), kwargs.pop("data_dir"), kwargs.pop("model_path")
        name = next((kwargs[k] for k in _MODEL_KEYS if kwargs.get(k) is not None), None)
        import os

        kwargs.update(resolve_input(name, input_size=kwargs["input_size"], in_channels=kwargs["in_channels"],
                                    num_classes=kwargs["num_classes"], data=data, data_dir=data_dir,
                                    model_path=os.pathsep.join(str(p) for p in paths) or None))
        return fn(*args, **kwargs)

    for opt in reversed([
        click.option("--input-size", type=click.IntRange(min=1), default=None,
                     help="Input height/width of the model [default: from --data, else the model's own, else 32]."),
        click.option("--in-channels", type=click.IntRange(min=1), default=None,
                     help="Input channels [default: from --data, else the model's own, else 3]."),
        click.option("--num-classes", type=click.IntRange(min=1), default=None,
                     help="Classes of the model's output [default: from --data, else the model's own, else 10]."),
        click.option("--data", default=None, help="Take the input shape and classes from this dataset (e.g. digits)."),
        click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Directory of --data's files."),
        click.option("--model-path", type=click.Path(file_okay=False, path_type=Path), multiple=True,
                     help="Directory put on the import path for a package.module:callable model (repeatable)."),
    ]):
        wrapper = opt(wrapper)
    return wrapper


def model_from_options(name: str, *, input_size: int, in_channels: int, num_classes: int,
                       eval_mode: bool = True) -> tuple[torch.nn.Module, torch.Tensor]:
    """``(registry model, example input (1, in_channels, input_size, input_size))``.

    Raises:
        ConfigError: unknown model name (the registry lists the valid ones).
    """
    import torch

    from hwprune.models import create_model

    model = create_model(name, num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    example = torch.randn(1, in_channels, input_size, input_size, generator=torch.Generator().manual_seed(EXAMPLE_SEED))
    return (model.eval() if eval_mode else model), example
