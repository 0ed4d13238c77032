"""torchvision classification models for the zoo test and benchmark (torchvision is an optional dependency).

torchvision 0.28 is the only release for torch 2.13, and its wheel is the CUDA build: without the
CUDA libraries its compiled ops are missing and ``import torchvision`` raises ``RuntimeError:
operator torchvision::nms does not exist`` (its meta registrations refer to the compiled ``nms``).
:func:`import_torchvision` is the one place that works around it: before the first import it
defines the two op schemas (``nms``, ``qnms``) in a ``torch.library.Library`` kept alive for the
process (ENVIRONMENT.md section 4). The classification models need no compiled op; detection
models and ``ops.nms`` stay unusable. Install (never in requirements.txt)::

    .venv/bin/pip install -c constraints.txt torchvision==0.28.0

:func:`build` creates a model by name with random weights and an input size it accepts;
:func:`randomise_` then moves every parameter and norm statistic away from torchvision's
initial values (zero classifier heads, layer scales of 1e-6, unit norms) so that an
equivalence check between a masked and a compact model can actually fail.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from types import ModuleType
from typing import Any

import torch
from torch import nn

from hwprune.base.errors import ConfigError, MissingBackendError

__all__ = ["import_torchvision", "classification_models", "input_size_for", "build", "randomise_"]

_SHIM: list[Any] = []  # the torch.library.Library holding the schemas; must outlive every torchvision use
_INPUT_SIZES = {"inception_v3": 96, "maxvit_t": 224}  # smallest sizes these architectures accept (>= 64)


def import_torchvision() -> ModuleType:
    """Import torchvision, defining the missing ``torchvision::nms``/``qnms`` schemas first (see module docstring).

    Raises:
        MissingBackendError: torchvision is not installed (or fails to import even with the shim).
    """
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if importlib.util.find_spec("torchvision") is None:
        raise MissingBackendError("torchvision is not installed; install it with: "
                                  ".venv/bin/pip install -c constraints.txt torchvision==0.28.0")
    if not _SHIM:
        try:
            torch.ops.torchvision.nms  # noqa: B018 - a working build registers it
        except (AttributeError, RuntimeError):
            lib = torch.library.Library("torchvision", "DEF")  # type: ignore[no-untyped-call]
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")  # type: ignore[no-untyped-call]
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")  # type: ignore[no-untyped-call]
            _SHIM.append(lib)
    try:
        return importlib.import_module("torchvision")
    except (ImportError, RuntimeError) as exc:
        raise MissingBackendError(f"torchvision does not import ({type(exc).__name__}: {exc})") from exc


def classification_models() -> list[str]:
    """Names of torchvision's image classification models (``torchvision.models.list_models``)."""
    tv = import_torchvision()
    return sorted(tv.models.list_models(module=tv.models))


def input_size_for(name: str, default: int = 64) -> int:
    """Input side H = W to use for ``name``: ``default``, raised where the architecture needs more.

    ViTs need a multiple of their patch size (``vit_h_14`` -> 70 at the default 64).
    """
    size = max(default, _INPUT_SIZES.get(name, default))
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        size = patch * math.ceil(size / patch)
    return size


def build(name: str, *, num_classes: int = 10, input_size: int | None = None, seed: int = 0) -> nn.Module:
    """The torchvision model ``name`` with random weights (seeded), built for ``input_size`` (eval mode).

    Raises:
        ConfigError: ``name`` is not a torchvision classification model.
        MissingBackendError: torchvision is not installed.
    """
    tv = import_torchvision()
    if name not in classification_models():
        raise ConfigError(f"unknown torchvision model {name!r}; valid: {', '.join(classification_models())}")
    size = input_size or input_size_for(name)
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name.startswith("vit_"):
        kwargs["image_size"] = size
    if name == "maxvit_t":
        kwargs["input_size"] = (size, size)
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    torch.manual_seed(seed)
    model: nn.Module = tv.models.get_model(name, **kwargs)
    return model.eval()


@torch.no_grad()
def randomise_(model: nn.Module, seed: int = 0, example_input: torch.Tensor | None = None) -> nn.Module:
    """Perturb parameters and norm statistics in place so that no channel is trivially zero.

    Every parameter gets seeded noise of 20 % of its own scale (at least 0.05): zero heads, layer
    scales of 1e-6 and unit norm weights all become ordinary values. BatchNorm running statistics
    are then calibrated on 4 seeded random batches shaped like ``example_input`` (cumulative
    average in train mode), so activations stay of unit scale through deep nets (random
    statistics let Inception's logits reach 1e7, where float32 rounding alone exceeds any
    relative tolerance); without ``example_input`` they are drawn at random (mean
    ``0.1 * N(0, 1)``, variance ``0.5 + U(0, 1)``). Returns ``model`` in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if not p.is_floating_point():
            continue
        scale = max(float(p.abs().mean()), 0.05) if p.numel() else 0.05
        p.add_(0.2 * scale * torch.randn(p.shape, generator=gen).to(p.dtype))
        if p.dim() == 1 and float(p.abs().max()) < 1e-3:
            p.add_(0.05)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.running_mean is not None and m.running_var is not None]
    if example_input is None:
        for m in norms:
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))  # type: ignore[union-attr]
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))  # type: ignore[union-attr]
        return model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    shape = (max(int(example_input.shape[0]), 4), *example_input.shape[1:])
    for _ in range(4):
        model(torch.randn(shape, generator=gen, dtype=example_input.dtype))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()
