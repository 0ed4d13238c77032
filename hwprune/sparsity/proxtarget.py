"""Which slices of each group the WGSEF prox measures and rescales (``prox_on``).

A channel group holds every producer-side slice of its channels: conv/linear rows, biases and the
normalisation layer's gamma/beta (``hwprune.groups``). Behind a BatchNorm the conv rows are
*function-irrelevant in scale*: BN divides them by their own batch standard deviation, so
``||W_rows||`` can be anything for the same network function, while the channel's output is
``gamma * x_hat + beta``. The WGSEF prox is degree-1 homogeneous (``prox(c x) = c prox(x)``), so it
selects by *relative* norms -- on a BN net those are dominated by the conv rows, i.e. by a quantity
the loss does not see, and its shrinkage of the conv rows only raises their effective learning rate
(``lr / ||W||^2``) without changing the function. Modes:

* ``"group"``: the whole group (METHOD.md section 6.2, the paper's reading).
* ``"norm"``: only the normalisation affine slices (gamma, beta) of groups that have them; their
  conv rows train with plain SGD and are zeroed together with gamma/beta when the group is zeroed
  (a channel with gamma = beta = 0 emits exactly 0 whatever its rows). Groups without a
  normalisation layer (e.g. a plain Linear) keep the whole group. **[default]** of the recipe.
* ``"weights"``: everything except gamma/beta (diagnosis only: gamma/beta "out of the groups").

The zero test and freezing act on the whole group: a group is zero iff all its slices are zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hwprune.base.errors import ConfigError
from hwprune.groups.ops import GroupOps

__all__ = ["PROX_ON", "ProxTarget", "norm_affine_params", "build_prox_target"]

PROX_ON = ("group", "norm", "weights")

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
               nn.modules.instancenorm._InstanceNorm)


def norm_affine_params(model: nn.Module) -> frozenset[str]:
    """Names of the affine parameters (weight = gamma, bias = beta) of every normalisation layer."""
    out: set[str] = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, _NORM_TYPES):
            for p_name, _ in mod.named_parameters(recurse=False):
                out.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return frozenset(out)


@dataclass(frozen=True)
class ProxTarget:
    """The measured part of every group.

    Attributes:
        mode: one of ``PROX_ON``.
        measured: parameter names whose slices are measured and rescaled by the prox in groups with
            ``has_part``; None in mode ``"group"`` (every slice).
        rest: the other grouped parameter names (rescaled only by 0 or 1, i.e. zeroed with the group).
        has_part: (G,) bool, groups with at least one slice in ``measured`` (the others use every slice).
        bn_backed: (G,) bool, groups holding normalisation gamma/beta slices (their scale is free on a BN net).
    """

    mode: str
    measured: frozenset[str] | None
    rest: frozenset[str]
    has_part: Tensor
    bn_backed: Tensor

    def sq_norms(self, gs: GroupOps, tensors: Mapping[str, Tensor] | None = None) -> Tensor:
        """(G,) float64 squared norms of the measured part (whole group where ``has_part`` is False)."""
        if self.measured is None:
            return gs.sq_norms(tensors)
        part = gs.sq_norms(tensors, only=self.measured)
        other = gs.sq_norms(tensors, only=self.rest)
        return torch.where(self.has_part, part, part + other)

    def norms(self, gs: GroupOps) -> Tensor:
        """(G,) float64 norms of the measured part."""
        return self.sq_norms(gs).sqrt()

    def dot(self, gs: GroupOps, a: Mapping[str, Tensor]) -> Tensor:
        """(G,) float64 ``<a_G, theta_G>`` over the measured part (``a``: one tensor per grouped parameter)."""
        if self.measured is None:
            return gs.dot(a)
        part = gs.dot(a, only=self.measured)
        other = gs.dot(a, only=self.rest)
        return torch.where(self.has_part, part, part + other)

    def scale_(self, gs: GroupOps, factors: Tensor) -> None:
        """Multiply the measured part of group i by ``factors[i]``; its other slices only when the factor is 0."""
        if self.measured is None:
            gs.scale_(factors)
            return
        f = torch.as_tensor(factors, dtype=torch.float64)
        gs.scale_(f, only=self.measured)
        gate = torch.where(f == 0, torch.zeros_like(f), torch.ones_like(f))
        gs.scale_(torch.where(self.has_part, gate, f), only=self.rest)


def build_prox_target(model: nn.Module, gs: GroupOps, mode: str = "group") -> ProxTarget:
    """The ``ProxTarget`` of ``mode`` (one of ``PROX_ON``) for ``gs`` built on ``model``."""
    if mode not in PROX_ON:
        raise ConfigError(f"prox_on must be one of {', '.join(PROX_ON)}, got {mode!r}")
    grouped = frozenset(gs.param_names)
    norm = norm_affine_params(model) & grouped
    bn_backed = gs.numel_of(norm) > 0
    if mode == "group":
        return ProxTarget(mode, None, frozenset(), torch.ones(gs.num_groups, dtype=torch.bool), bn_backed)
    measured = norm if mode == "norm" else grouped - norm
    has_part = gs.numel_of(measured) > 0
    return ProxTarget(mode, measured, grouped - measured, has_part, bn_backed)
