"""Shared click options of ``hwprune train`` and ``hwprune run``, ``--config FILE`` and ``--resume``.

Precedence: CLI option > ``--config FILE`` value > ``TrainJobConfig`` default. ``--config`` is
eager: its keys that name an option of the command (``epochs``, ``bench_iters``, ``latency_budget``,
``out`` ...) become that option's default (click converts and checks them as if typed), the other
keys are job keys (``model_kwargs``, ``method_options``, ``dense_lr`` ...) checked by
``TrainJobConfig``; an unknown key is one line with a did-you-mean over both. ``--resume`` repeats
the job recorded in ``RUN_DIR/config.yaml``; an option given on the command line that differs from
the recorded one is an error (a resumed run must be the run that was started).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from hwprune.base.checks import BLOCK_ORDERS
from hwprune.base.errors import ConfigError

if TYPE_CHECKING:
    from hwprune.training.config import TrainJobConfig
    from hwprune.training.runconfig import RunConfig

__all__ = ["job_options", "build_job_config", "MethodOption", "config_option", "ConfigValues", "explicit",
           "resume_job_config"]

_META = "hwprune.config"


class MethodOption(click.Option):
    """``--method`` whose help lists the registered methods (imported only when help is shown)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        """Help line with the default shown as resolved by the job configuration."""
        from hwprune.sparsity.methods import list_methods

        listing = "; ".join(f"{n}: {s}" for n, s in list_methods().items())
        self.help = f"sparsification method [default: wgsef]. Registered: {listing}"
        return super().get_help_record(ctx)


@dataclass
class ConfigValues:
    """What ``--config FILE`` supplied: its path, job-only keys and a run config's pipeline section."""

    path: Path | None = None
    job: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)


def _option_keys(cmd: click.Command) -> dict[str, click.Parameter]:
    """Config key -> parameter: each option's long names (``bench-iters`` -> ``bench_iters``) and its name."""
    out: dict[str, click.Parameter] = {}
    for p in cmd.params:
        if p.name in (None, "config_file", "help"):
            continue
        out[str(p.name)] = p
        for opt in p.opts:
            if opt.startswith("--"):
                out[opt[2:].replace("-", "_")] = p
    return out


def _as_default(param: click.Parameter, value: Any) -> Any:
    """A YAML value as the option's default (a list for a comma-separated text option is joined)."""
    if isinstance(value, list) and not param.multiple and getattr(param.type, "name", "") == "text":
        return ",".join(str(v) for v in value)
    return value


def _config_callback(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Eager ``--config``: option keys become defaults (``ctx.default_map``), the rest are job keys."""
    from hwprune.training.config import TrainJobConfig, load_config_sections

    values = ConfigValues()
    ctx.meta[_META] = values
    if value is None:
        return None
    job_keys, pipeline = load_config_sections(value)
    options = _option_keys(ctx.command)
    fields = set(TrainJobConfig.__dataclass_fields__)
    defaults: dict[str, Any] = {}
    for key, v in job_keys.items():
        name = str(key).replace("-", "_")
        if name in options and name not in fields:
            defaults[str(options[name].name)] = _as_default(options[name], v)
        elif name in fields:
            values.job[name] = v
        else:
            close = difflib.get_close_matches(name, sorted(set(options) | fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{value}: unknown key '{key}'{hint}; valid: the options of 'hwprune "
                              f"{ctx.command.name}' ({', '.join(sorted(set(options) - {'json'}))}) and the job keys "
                              f"({', '.join(sorted(fields))})")
    for key, v in pipeline.items():  # a run's config.yaml: its pipeline options, where the command has them
        if key in options:
            defaults[str(options[key].name)] = _as_default(options[key], v)
    values.path, values.pipeline = Path(value), pipeline
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with the eager ``--config FILE`` option (module docstring)."""
    return click.option("--config", "config_file", type=click.Path(path_type=Path), is_eager=True,
                        callback=_config_callback, expose_value=True,
                        help="YAML file of option and job keys (any option of this command, plus job keys such as "
                        "model_kwargs, method_options, dense_lr); command-line options override it")(fn)


_JOB_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--model", help="model name from the registry (e.g. digits_cnn, lenet5, vgg, resnet20, "
                 "mobilenetv2, mlp) or package.module:callable (docs/custom-models.md) [default: digits_cnn]"),
    click.option("--model-path", "model_path", type=click.Path(file_okay=False, path_type=Path), multiple=True,
                 help="directory put on the import path for a package.module:callable model (repeatable; "
                 "recorded in config.yaml) [default: the working directory]"),
    click.option("--data", help="dataset: digits, mnist-5k, mnist, fashion-mnist, cifar10, imagefolder, "
                 "synthetic [default: digits]"),
    click.option("--data-dir", type=click.Path(path_type=Path), help="directory of dataset files (recorded as an "
                 "absolute path)"),
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
    click.option("--lam", type=float, help="regularisation strength lambda [default: the method's own; wgsef "
                 "chooses its prox step by continuation and uses --lam only with method option schedule: constant]"),
    click.option("--distill/--no-distill", default=None,
                 help="fine-tune with a dense-teacher distillation term (any method) [default: off]"),
    click.option("--bn-recalibrate/--no-bn-recalibrate", "bn_recalibrate", default=None,
                 help="re-estimate BatchNorm statistics on training images after the projection [default: on]"),
    click.option("--block-order", type=click.Choice(BLOCK_ORDERS),
                 help="which channels share a channel block: sorted by magnitude after the dense phase, or "
                 "consecutive [default: norm]"),
    click.option("--lr", type=float, help="learning rate of the sparse phase (and of the dense phase unless "
                 "--dense-lr) [default: 0.05]"),
    click.option("--dense-lr", type=float, help="learning rate of the dense phase [default: --lr]"),
    click.option("--finetune-lr", type=float, help="learning rate of the fine-tune [default: --lr / 2]"),
    click.option("--momentum", type=float, help="SGD momentum of every phase, in [0, 1) [default: 0.9]"),
    click.option("--weight-decay", type=float, help="weight decay of every phase (the sparse phase applies it to the "
                 "ungrouped parameters only) [default: 5e-4]"),
    click.option("--batch-size", type=int, help="batch size [default: 64]"),
    click.option("--seed", type=int, help="training seed: initialisation, shuffling, dropout [default: 0]"),
    click.option("--checkpoint", type=click.Path(path_type=Path),
                 help="start from this saved dense model (path without suffix, e.g. RUN/dense) instead of training"),
    click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), help="training device [default: cpu]"),
    config_option,
]


def job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with every training-job option and ``--config``."""
    for opt in reversed(_JOB_OPTIONS):
        fn = opt(fn)
    return fn


def _clean(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):  # --model-path DIR (repeatable)
        return os.pathsep.join(str(v) for v in value) if value else None
    return value


def _config_values(options: dict[str, Any]) -> tuple[ConfigValues, str]:
    """The ``--config`` values of the current command (read now when called outside click)."""
    from hwprune.training.config import load_config_sections

    cfg_file = options.pop("config_file", None)
    ctx = click.get_current_context(silent=True)
    values = ctx.meta.get(_META) if ctx is not None else None
    if not isinstance(values, ConfigValues):
        values = ConfigValues()
        if cfg_file is not None:
            job, pipeline = load_config_sections(cfg_file)
            values = ConfigValues(Path(cfg_file), job, pipeline)
    source = f"{values.path} + command line" if values.path is not None else "command line"
    return values, source


def build_job_config(options: dict[str, Any], **overrides: Any) -> TrainJobConfig:
    """Merge ``--config`` job keys, then non-None CLI values (and ``overrides``), into a ``TrainJobConfig``."""
    from hwprune.training.config import TrainJobConfig

    values, source = _config_values(options)
    merged: dict[str, Any] = dict(values.job)
    for key, value in {**options, **overrides}.items():
        value = _clean(value)
        if value is not None:
            merged[key] = value
    return TrainJobConfig.from_mapping(merged, source=source)


def explicit(names: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``names`` the user gave (command line or ``--config``), not click defaults."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {k: v for k, v in names.items() if v is not None}
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.DEFAULT_MAP)
    return {k: v for k, v in names.items() if ctx.get_parameter_source(k) in given}


def resume_job_config(recorded: RunConfig, options: dict[str, Any], *, where: Path,
                      **overrides: Any) -> TrainJobConfig:
    """The recorded job of a run being resumed; an explicitly given option that differs is a ConfigError."""
    from hwprune.training.config import TrainJobConfig

    values, _ = _config_values(options)
    base = recorded.train.to_dict()
    given = {**values.job, **{k: _clean(v) for k, v in explicit(options).items() if _clean(v) is not None},
             **{k: v for k, v in overrides.items() if v is not None}}
    probe = TrainJobConfig.from_mapping({**base, **given}, source="command line").portable().to_dict()
    changed = [f"{k} {base.get(k)!r} -> {probe[k]!r}" for k in given if k in probe and probe[k] != base.get(k)
               and k != "profile"]
    if changed:
        raise ConfigError(f"--resume: {where} was started with other options ({'; '.join(changed)}); drop them to "
                          "continue the recorded run, or start a new run (another --out, or --force)")
    return recorded.train
