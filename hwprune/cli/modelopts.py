"""The model-from-options of the commands that take a bare registry model (``--model`` and its input).

``model_input_options`` adds ``--input-size``, ``--in-channels`` and ``--num-classes`` to a command;
``model_from_options`` builds the model and its example input from them (one definition of both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import torch

__all__ = ["model_input_options", "model_from_options", "EXAMPLE_SEED"]

EXAMPLE_SEED = 0  # the example input is standard normal from this seed (tracing, export parity)


def model_input_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with ``--input-size`` (32), ``--in-channels`` (3) and ``--num-classes`` (10)."""
    for opt in reversed([
        click.option("--input-size", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Input height/width of the model."),
        click.option("--in-channels", type=click.IntRange(min=1), default=3, show_default=True,
                     help="Input channels of the model."),
        click.option("--num-classes", type=click.IntRange(min=1), default=10, show_default=True,
                     help="Classes of the model's output."),
    ]):
        fn = opt(fn)
    return fn


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
