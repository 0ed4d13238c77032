"""One coupled channel set of Torch-Pruning's graph, read into hwprune terms (internal to ``channels``).

``analyse_set`` turns a torch-pruning group (every slice that must go with one root channel) into a
``CoupledSet``: producer members (convs/Linear output rows, norm gamma/beta, depthwise followers,
bare parameters), consumer members (input columns) and the reasons the set cannot be grouped
exactly (an opaque reshape, a normalisation across the channels, a module hwprune cannot slice).
``atoms`` gives the smallest removable channel sets (orbits across conv groups).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hwprune.groups.graph import node_label, opaque_reason
from hwprune.groups.segments import conv_or_linear

__all__ = ["Member", "CoupledSet", "analyse_set", "atoms", "param_axis"]

_EXACT_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_STAT_NORMS = (nn.LayerNorm, nn.GroupNorm)  # statistics across channels: a zero channel still counts
_PARAM_OPS = ("Add", "Sub", "Mul", "Cat", "Expand", "Repeat")  # how a bare parameter may meet the channels


@dataclass
class Member:
    """One module (or bare parameter) of a coupled set; ``idxs[i]`` is its slice of root channel ``root_idxs[i]``."""

    name: str
    module: nn.Module  # the module itself, or the owner of a bare parameter
    idxs: list[int]
    root_idxs: list[int]
    param: nn.Parameter | None = None  # a bare parameter (layer scale, class token, ...)
    param_dim: int = 0  # its sliced axis

    @property
    def is_layer(self) -> bool:
        """True for a conv/Linear module member (not a bare parameter)."""
        return self.param is None and conv_or_linear(self.module)


@dataclass
class CoupledSet:
    """Producers/consumers of one coupled channel set and why it may not be grouped."""

    root: str
    width: int
    producers: list[Member] = field(default_factory=list)
    consumers: list[Member] = field(default_factory=list)
    output_coupled: bool = False
    blockers: list[str] = field(default_factory=list)  # reasons the set must stay dense


def param_axis(module: nn.Module, pname: str, ndim: int, numel: int) -> int | None:
    """Channel axis of producer parameter ``pname`` of ``module`` (None: a shared scalar, not grouped).

    Raises:
        ValueError: the module type is not one hwprune slices (the caller keeps the set dense).
    """
    if conv_or_linear(module):
        return 0
    if isinstance(module, _EXACT_NORMS + _STAT_NORMS):
        return ndim - 1
    if isinstance(module, nn.PReLU):
        return None if numel == 1 else 0
    if isinstance(module, nn.Embedding):
        return 1
    raise ValueError(type(module).__name__)


def _bare_param_blocker(dg: Any, node: Any, label: str) -> str | None:
    ops = [o.grad_fn.name() for o in node.outputs if o.grad_fn is not None and hasattr(o.grad_fn, "name")]
    bad = [op for op in ops if not op.startswith(_PARAM_OPS)]
    if bad:
        return (f"{label} enters through {bad[0]}; bare parameters are sliced only where they are added, "
                "multiplied or concatenated")
    return None


def _module_blocker(module: nn.Module, name: str) -> str | None:
    if isinstance(module, nn.MultiheadAttention):
        return (f"'{name}' (MultiheadAttention) has these channels as its embed_dim: the residual stream stays "
                "dense; prune its heads with a 'head' rule")
    if isinstance(module, _STAT_NORMS):
        return (f"'{name}' ({type(module).__name__}) normalises across these channels, so a zeroed channel is not "
                "a removed one")
    try:
        for pname, p in module.named_parameters(recurse=False):
            param_axis(module, pname, p.dim(), p.numel())
    except ValueError:
        return f"'{name}' ({type(module).__name__}) is coupled to these channels but hwprune cannot slice it"
    return None


def analyse_set(dg: Any, root: nn.Module, group: Any, names: Mapping[nn.Module, str]) -> CoupledSet:
    """Read one torch-pruning group (full index lists) into a :class:`CoupledSet`."""
    cs = CoupledSet(root=names[root], width=len(group[0].idxs))
    for item in group:
        dep, node = item.dep, item.dep.target
        producer = dg.is_out_channel_pruning_fn(dep.handler)
        if producer and not node.outputs:
            cs.output_coupled = True
        why = opaque_reason(node)
        if why is not None:
            cs.blockers.append(f"channels pass {node_label(dg, node)}: {why}")
        module = node.module
        if isinstance(module, nn.Parameter):
            label = node_label(dg, node)
            blocker = _bare_param_blocker(dg, node, label)
            if blocker is not None:
                cs.blockers.append(blocker)
                continue
            pname = dg._param_to_name[module]
            owner = dg.model.get_submodule(pname.rpartition(".")[0])
            member = Member(pname, owner, list(item.idxs), list(item.root_idxs), param=module,
                            param_dim=int(node.pruning_dim) % module.dim())
            (cs.producers if producer else cs.consumers).append(member)
            continue
        name = names.get(module) if isinstance(module, nn.Module) else None
        if name is None:
            continue  # torch-pruning's parameter-free ops (concat, add, reshape, output)
        member = Member(name, module, list(item.idxs), list(item.root_idxs))
        if producer:
            blocker = _module_blocker(module, name)
            if blocker is not None:
                cs.blockers.append(blocker)
            cs.producers.append(member)
        else:
            cs.consumers.append(member)
    return cs


def atoms(cs: CoupledSet) -> tuple[list[list[int]], str | None]:
    """Smallest removable channel sets (root indices), and a blocker if a grouped conv splits one.

    Singletons, or orbits across conv groups: Torch-Pruning removes the same relative positions
    from every conv group, so channel ``j`` of every conv group is one unit.
    """
    parent = list(range(cs.width))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for member, is_out in [(m, True) for m in cs.producers] + [(m, False) for m in cs.consumers]:
        mod = member.module
        if not isinstance(mod, nn.modules.conv._ConvNd) or mod.groups == 1:
            continue
        if is_out and mod.groups == mod.out_channels:
            continue  # depthwise: torch-pruning keeps in == out == groups
        width = mod.out_channels if is_out else mod.in_channels
        per = width // mod.groups
        to_root: dict[int, int] = {}
        for x, r in zip(member.idxs, member.root_idxs, strict=False):
            to_root.setdefault(x, r)
        for x, r in to_root.items():
            for t in range(mod.groups):
                y = x % per + t * per
                if y not in to_root:
                    return [], (f"grouped conv '{member.name}' (groups={mod.groups}) receives only part of these "
                                "channels in some conv groups")
                a, b = find(r), find(to_root[y])
                if a != b:
                    parent[max(a, b)] = min(a, b)
    comps: dict[int, list[int]] = {}
    for i in range(cs.width):
        comps.setdefault(find(i), []).append(i)
    return sorted(comps.values(), key=lambda c: c[0]), None
