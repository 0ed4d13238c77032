"""Shared click options of ``hwprune train`` and ``hwprune run`` and their merge with ``--config``.

Precedence: CLI option > ``--config FILE`` value > ``TrainJobConfig`` default. The resolved
configuration is what the run directory's ``config.yaml`` stores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from hwprune.training.config import TrainJobConfig

__all__ = ["job_options", "build_job_config", "MethodOption"]


class MethodOption(click.Option):
    """``--method`` whose help lists the registered methods (imported only when help is shown)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        """Help line with the default shown as resolved by the job configuration."""
        from hwprune.sparsity.methods import list_methods

        listing = "; ".join(f"{n}: {s}" for n, s in list_methods().items())
        self.help = f"sparsification method [default: wgsef]. Registered: {listing}"
        return super().get_help_record(ctx)


_JOB_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--model", help="model name from the registry (e.g. digits_cnn, lenet5, vgg, resnet20, "
                 "mobilenetv2, mlp) or package.module:callable [default: digits_cnn]"),
    click.option("--data", help="dataset: digits, mnist-5k, mnist, fashion-mnist, cifar10, imagefolder, "
                 "synthetic [default: digits]"),
    click.option("--data-dir", type=click.Path(path_type=Path), help="directory of dataset files"),
    click.option("--image-size", type=int, help="resize inputs to this side length"),
    click.option("--train-limit", type=int, help="use at most this many training images (a stratified subset "
                 "drawn with --data-seed; the validation split is carved from them)"),
    click.option("--data-seed", type=int, help="seed of the data splits and the --train-limit subset, separate from "
                 "--seed so a seed repeat keeps the data [default: 0]"),
    click.option("--val-fraction", type=float, help="fraction of the training images held out (stratified) for the "
                 "per-epoch evaluation; the test split is evaluated once at the end [default: 0.1]"),
    click.option("--profile", help="bundled profile name, a .yaml path, or 'auto' [default: auto]"),
    click.option("--method", cls=MethodOption, help="sparsification method"),
    click.option("--epochs", type=int, help="epochs of the sparse phase [default: 10]"),
    click.option("--dense-epochs", type=int, help="epochs of the dense phase [default: --epochs]"),
    click.option("--finetune-epochs", type=int, help="epochs of the fine-tune [default: ceil(epochs/3)]"),
    click.option("--compact-finetune/--masked-finetune", "compact_finetune", default=None,
                 help="fine-tune the compact model after surgery, or the masked full-width model (then "
                 "'hwprune prune' does the surgery) [default: compact]"),
    click.option("--lam", type=float, help="regularisation strength lambda [default: the method's own, wgsef 0.5]"),
    click.option("--lr", type=float, help="learning rate [default: 0.05]"),
    click.option("--batch-size", type=int, help="batch size [default: 64]"),
    click.option("--seed", type=int, help="training seed: initialisation, shuffling, dropout [default: 0]"),
    click.option("--checkpoint", type=click.Path(path_type=Path),
                 help="start from this saved dense model (path without suffix, e.g. RUN/dense) instead of training"),
    click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), help="training device [default: cpu]"),
    click.option("--config", "config_file", type=click.Path(path_type=Path),
                 help="YAML file supplying defaults for any option (CLI options override it)"),
]


def job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with every training-job option."""
    for opt in reversed(_JOB_OPTIONS):
        fn = opt(fn)
    return fn


def build_job_config(options: dict[str, Any], **overrides: Any) -> TrainJobConfig:
    """Merge ``--config`` file values (a job mapping or a run's ``config.yaml``), then non-None CLI values."""
    from hwprune.training.config import TrainJobConfig, load_config_file

    source = "command line"
    merged: dict[str, Any] = {}
    cfg_file = options.pop("config_file", None)
    if cfg_file is not None:
        merged.update(load_config_file(cfg_file))
        source = f"{cfg_file} + command line"
    for key, value in {**options, **overrides}.items():
        if value is not None:
            merged[key] = str(value) if isinstance(value, Path) else value
    return TrainJobConfig.from_mapping(merged, source=source)
