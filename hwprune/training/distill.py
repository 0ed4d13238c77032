"""Dense-teacher knowledge distillation for the fine-tune (``--distill``), for every method.

:class:`DistillTerm` is a ``batch_loss(inputs, outputs, labels)`` of the phases engine: the frozen
dense teacher (eval mode, no gradient) is run on the student's batch and the term

    alpha * T^2 * KL(softmax(teacher / T) || softmax(outputs / T))

is added to the cross-entropy (Hinton et al. 2015, in the additive form: ``CE + alpha T^2 KL`` is
Hinton's ``(1 - a) CE + a T^2 KL`` with ``a = alpha / (1 + alpha)``, scaled by ``1 + alpha``).
Evaluation is untouched (plain cross-entropy). Cost: one teacher forward per step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DistillTerm", "DISTILL_ALPHA", "DISTILL_TEMPERATURE"]

DISTILL_ALPHA = 0.5
DISTILL_TEMPERATURE = 4.0


class DistillTerm:
    """The distillation term of one fine-tune.

    Args:
        teacher: the dense model; put in eval mode and frozen (the caller passes a copy).
        alpha: weight of the term, >= 0.
        temperature: softening temperature T > 0.
    """

    def __init__(self, teacher: nn.Module, *, alpha: float = DISTILL_ALPHA,
                 temperature: float = DISTILL_TEMPERATURE) -> None:
        if not alpha >= 0.0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha = float(alpha)
        self.temperature = float(temperature)

    def __call__(self, inputs: Any, outputs: Tensor, labels: Any) -> Tensor:
        """Scalar term for a batch: ``inputs`` (N, C, H, W), student logits ``outputs`` (N, classes)."""
        with torch.no_grad():
            t_logits = self.teacher(inputs.to(next(self.teacher.parameters()).device)).to(outputs.device)
        t = self.temperature
        kl = F.kl_div(F.log_softmax(outputs / t, dim=1), F.log_softmax(t_logits / t, dim=1),
                      reduction="batchmean", log_target=True)
        return self.alpha * t * t * kl
