"""BatchNorm running-statistics recalibration on training batches (a hook of the phases engine).

After the top-k projection zeroes whole channel groups, every BatchNorm *downstream* of them keeps
running statistics measured on the old activations, so the model evaluates with stale normalisation
until training has refreshed the running averages. :func:`recalibrate_bn` re-estimates them: the
running mean/var are reset and re-averaged (cumulative average, ``momentum = None``) over a fixed,
seeded sample of training images, with no gradient and no parameter change. Zeroed channels
(gamma = beta = 0) stay exactly 0. Training itself is not affected (BatchNorm trains on batch
statistics); what changes is every evaluation between the projection and the end of the fine-tune,
and the saved masked model. :func:`bn_recalibration_hook` is the ``ModelHook`` the train job runs
after the projection, for every method.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from hwprune.training.phases import ModelHook, PhaseRunner

__all__ = ["batchnorm_layers", "recalibrate_bn", "bn_recalibration_hook", "RECAL_IMAGES"]

RECAL_IMAGES = 4096  # training images the statistics are re-estimated on (a seeded random sample)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` that tracks running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Recompute every BatchNorm's running mean/var as the average over ``batches``.

    Args:
        model: the network; its training flag and the layers' momenta are restored afterwards.
        batches: input batches (N, C, H, W) (moved to the model's device).

    Returns:
        The number of BatchNorm layers recalibrated (0: none, the model is untouched).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = model.training
    device = next(model.parameters()).device
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the recalibration batches
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x.to(device))
            seen += 1
    finally:
        for m, mom in zip(layers, momenta, strict=True):
            m.momentum = mom
        model.train(was_training)
    if seen == 0:
        raise ValueError("recalibrate_bn got no batches")
    return len(layers)


def bn_recalibration_hook(num_images: int = RECAL_IMAGES, batch_size: int = 256) -> ModelHook:
    """A ``ModelHook`` recalibrating ``model``'s BatchNorm statistics on ``num_images`` training images."""

    def hook(model: nn.Module, runner: PhaseRunner) -> None:
        n = max(1, -(-num_images // batch_size))
        recalibrate_bn(model, runner.train_batches(n, batch_size, seed=runner.ctx.seed))

    return hook
