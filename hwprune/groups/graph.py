"""Torch-Pruning's dependency graph with index mappings checked against the traced shapes.

Torch-Pruning couples channels through ``view``/``reshape``, ``split``/``chunk``/``unbind`` and
``cat`` nodes by heuristics that assume NCHW channels on dim 1. Real models break them: a channel
shuffle (ShuffleNet) raises ``ZeroDivisionError`` inside its reshape mapping, Swin's window
partition is read as a flatten and expanded into billions of indices, a ``chunk`` along the last
(channel) axis of a token tensor is taken as an identity. :func:`build_graph` traces the model once
through Torch-Pruning and then checks every such node against the input and output shapes the
trace recorded (``grad_fn`` metadata), before any index mapping is built:

* a reshape that keeps the channel axis intact (same size, same number of elements before it) is
  an identity; a channel-major flatten ``(N, C, *S) -> (N, C*prod(S))`` gets Torch-Pruning's
  flatten mapping; every other reshape (channel shuffle, head split, unflatten) is **opaque**;
* a split/unbind along the channel axis is mapped only where Torch-Pruning handles it (NCHW dim 1);
  along any other axis it is an identity; a ``cat`` likewise;
* a node whose mapping raises inside Torch-Pruning is opaque.

Channel sets stop at an opaque node (its dependencies never fire) and carry the node, so the
group builder keeps exactly those sets dense and logs why (``opaque_reason``); the rest of the
model is unaffected. Bare ``nn.Parameter`` s (layer scale, class token, position embedding) are
traced as Torch-Pruning "unwrapped parameters", sliced along their last non-singleton axis.
Errors raised inside Torch-Pruning are re-raised as ``ConfigError`` naming the model and layer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops
from torch_pruning.dependency import index_mapping, shape_infer

from hwprune.base.errors import ConfigError, HwpruneError
from hwprune.groups.segments import preserve_mode

__all__ = ["build_graph", "opaque_reason", "iter_channel_groups", "node_label", "ROOT_TYPES"]

log = logging.getLogger("hwprune.groups.groupset")

ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)
_OPAQUE = "hwprune_opaque"  # attribute set on a torch-pruning Node that must not propagate channels
_MAPPED_TYPES = (ops.OPTYPE.RESHAPE, ops.OPTYPE.SPLIT, ops.OPTYPE.UNBIND, ops.OPTYPE.CONCAT)


def _never(*_args: Any, **_kwargs: Any) -> None:  # trigger of a cut dependency; never a handler
    return None


def opaque_reason(node: Any) -> str | None:
    """Why channels cannot pass ``node`` (a torch-pruning ``Node``), or None when they can."""
    reason = getattr(node, _OPAQUE, None)
    return str(reason) if reason is not None else None


def node_label(dg: Any, node: Any) -> str:
    """Human name of a graph node: the module name, or the op and the nearest named module upstream."""
    name = dg._module2name.get(node.module) if isinstance(node.module, nn.Module) else None
    if name is not None and not isinstance(node.module, nn.Parameter):
        return f"'{name}'"
    if isinstance(node.module, nn.Parameter):
        pname = dg._param_to_name.get(node.module)
        return f"parameter '{pname}'" if pname else "a bare parameter"
    fn = node.grad_fn
    op = fn.name() if fn is not None and hasattr(fn, "name") else type(node.module).__name__
    seen: set[int] = set()
    stack = list(node.inputs)
    while stack:
        n = stack.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        up = dg._module2name.get(n.module) if isinstance(n.module, nn.Module) else None
        if up is not None and not isinstance(n.module, nn.Parameter):
            return f"{op} after '{up}'"
        stack.extend(n.inputs)
    return op


# ----------------------------------------------------------------------------- traced shapes
def _meta_shape(fn: Any, index: int) -> tuple[int, ...] | None:
    if fn is None:
        return None
    if hasattr(fn, "variable"):  # AccumulateGrad: a leaf tensor
        return tuple(int(s) for s in fn.variable.shape)
    meta = getattr(fn, "_input_metadata", None)
    if meta is None or index >= len(meta):
        return None
    return tuple(int(s) for s in meta[index].shape)


def _out_shapes(node: Any) -> list[tuple[int, ...]]:
    meta = getattr(node.grad_fn, "_input_metadata", None) or []
    return [tuple(int(s) for s in m.shape) for m in meta]


def _in_shape(node: Any) -> tuple[int, ...] | None:
    fns = [f for f in getattr(node.grad_fn, "next_functions", ()) if f[0] is not None]
    return _meta_shape(fns[0][0], fns[0][1]) if fns else None


def _channels_in(dg: Any, node: Any) -> int | None:
    for n in node.inputs:
        ch = shape_infer.infer_out_channels_recursively(dg, n, [0])
        if ch:
            return int(ch)
    return None


def _axis_kept(shape_in: Sequence[int], shape_out: Sequence[int], c: int) -> bool:
    """True when an axis of size ``c`` sits at the same flat offset in both shapes (a pure relabel)."""
    before_out = {math.prod(shape_out[:j]) for j, s in enumerate(shape_out) if s == c}
    return any(s == c and math.prod(shape_in[:i]) in before_out for i, s in enumerate(shape_in))


# ----------------------------------------------------------------------------- node checks
def _reshape_verdict(dg: Any, node: Any) -> tuple[str, int]:
    """("identity" | "flatten" | "opaque: <why>", flatten stride) for a view/reshape node."""
    s_in, outs = _in_shape(node), _out_shapes(node)
    c = _channels_in(dg, node)
    if s_in is None or len(outs) != 1 or c is None:
        return "opaque: shapes or channel count unknown", 0
    s_out = outs[0]
    if _axis_kept(s_in, s_out, c):
        return "identity", 0
    if len(s_in) >= 3 and len(s_out) == 2 and s_in[0] == s_out[0] and s_in[1] == c \
            and s_out[1] == c * math.prod(s_in[2:]):
        return "flatten", math.prod(s_in[2:])
    return f"opaque: reshape {list(s_in)} -> {list(s_out)} moves the {c} channels", 0


def _split_verdict(dg: Any, node: Any) -> str:
    """"tp" (Torch-Pruning's mapping is right), "identity" or "opaque: <why>" for split/unbind/cat."""
    is_cat = node.type == ops.OPTYPE.CONCAT
    outs = _out_shapes(node)
    shape = (outs[0] if outs else None) if is_cat else _in_shape(node)
    dim = getattr(node.grad_fn, "_saved_dim", None)
    op = {ops.OPTYPE.CONCAT: "cat", ops.OPTYPE.UNBIND: "unbind"}.get(node.type, "split")
    if shape is None or dim is None or not -len(shape) <= int(dim) < len(shape):
        return f"opaque: {op} axis unknown"
    dim = int(dim) % len(shape)
    c = shape_infer.infer_in_channels_recursively(dg, node, [0]) if is_cat else _channels_in(dg, node)
    if c is None:
        return f"opaque: {op} along axis {dim}, channel count unknown"
    if shape[dim] != c:
        return "identity"  # along a spatial/token axis: every piece carries all channels
    if dim == 1 and node.type != ops.OPTYPE.UNBIND:
        return "tp"  # NCHW channel split/concat: torch-pruning's offsets are right
    return f"opaque: {op} along axis {dim} of {list(shape)} cuts the {c} channels"


# Functional layers (weights not owned by a module torch-pruning knows): channels do not pass 1:1.
_FUNCTIONAL = ("Addmm", "Mm", "Bmm", "Baddbmm", "Addbmm", "Mv", "Matmul", "Convolution", "Embedding",
               "ScaledDotProduct", "AsStrided", "Einsum", "Linear")
# Ops that reduce, select or normalise along an axis: channel-separable only if the channel axis survives.
_ALONG_AXIS = ("Mean", "Sum", "Amax", "Amin", "Max", "Min", "Std", "Var", "Norm", "Logsumexp", "Prod", "Index",
               "Gather", "Select", "Take", "Cumsum", "Cumprod", "Median")
_SOFTMAX = ("Softmax", "LogSoftmax")
_LAYER_TYPES = (ops.OPTYPE.LINEAR, ops.OPTYPE.CONV, ops.OPTYPE.DEPTHWISE_CONV)


def _elementwise_verdict(dg: Any, node: Any) -> str | None:
    """Why an op torch-pruning treats as element-wise does not map channel j to channel j (None: it does)."""
    fn = node.grad_fn
    op = fn.name() if fn is not None and hasattr(fn, "name") else ""
    stem = op.split("Backward")[0]
    if stem.startswith(_FUNCTIONAL):
        if node.outputs and all(o.type in _LAYER_TYPES for o in node.outputs):
            return None  # the matmul inside a traced Linear/conv (3-d input): that module prunes it
        return f"functional {stem} mixes channels (its weights are not a module torch-pruning can slice)"
    if not stem.startswith(_ALONG_AXIS + _SOFTMAX):
        return None
    s_in, outs = _in_shape(node), _out_shapes(node)
    c = _channels_in(dg, node)
    if s_in is None or not outs or c is None:
        return None
    if stem in _SOFTMAX:
        dim = getattr(fn, "_saved_dim", None)
        if dim is not None and -len(s_in) <= int(dim) < len(s_in) and s_in[int(dim)] == c:
            return f"{stem} across the {c} channels (a removed channel still counts)"
        return None
    c_axes = [i for i, v in enumerate(s_in) if v == c]
    dims = _saved_dims(fn, len(s_in))
    if dims is not None:
        gone = bool(c_axes) and all(i in dims for i in c_axes)  # every axis that could hold the channels
    else:
        gone = len(c_axes) == 1 and sum(1 for v in outs[0] if v == c) == 0
    if gone:
        return f"{stem} {list(s_in)} -> {list(outs[0])} reduces or selects across the {c} channels"
    return None


def _saved_dims(fn: Any, ndim: int) -> tuple[int, ...] | None:
    """Axes an op reduces/selects (from its saved ``dim``); all axes for a full reduction; None if unknown."""
    dim = getattr(fn, "_saved_dim", None)
    if dim is None:
        return tuple(range(ndim)) if fn.name().startswith(("MeanBackward0", "SumBackward0")) else None
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if any(not -ndim <= int(d) < ndim for d in dims):
        return None
    return tuple(int(d) % ndim for d in dims) if dims else tuple(range(ndim))


def _mark_opaque(node: Any, reason: str) -> None:
    setattr(node, _OPAQUE, reason)
    node.type = ops.OPTYPE.ELEMENTWISE  # torch-pruning's index mapping skips it from now on
    for dep in node.dependencies:
        dep.trigger = _never  # channels reaching this node go no further


def _install_flatten(node: Any, stride: int) -> None:
    node.type = ops.OPTYPE.ELEMENTWISE  # mapping installed here, never rewritten by torch-pruning
    for in_node in node.inputs:
        for dep in node.dependencies:
            if dep.target is in_node:
                dep.index_mapping[0] = index_mapping._FlattenIndexMapping(stride=stride, reverse=True)
        for dep in in_node.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = index_mapping._FlattenIndexMapping(stride=stride, reverse=False)


def _sanitise(dg: Any) -> int:
    """Check every reshape/split/cat node against the traced shapes; returns how many became opaque."""
    opaque = 0
    for node in list(dg.module2node.values()):
        if node.type == ops.OPTYPE.ELEMENTWISE:
            why = _elementwise_verdict(dg, node)
            if why is not None:
                _mark_opaque(node, why)
                opaque += 1
            continue
        if node.type not in _MAPPED_TYPES:
            continue
        if node.type == ops.OPTYPE.RESHAPE:
            verdict, stride = _reshape_verdict(dg, node)
        else:
            verdict, stride = _split_verdict(dg, node), 0
        if verdict == "identity":
            if node.type == ops.OPTYPE.RESHAPE:
                node.type = ops.OPTYPE.ELEMENTWISE
            else:
                node.enable_index_mapping = False
                if node.type == ops.OPTYPE.SPLIT:  # its pieces carry all channels, not split_sizes of them
                    node.module.split_sizes = None
        elif verdict == "flatten":
            _install_flatten(node, stride)
        elif verdict.startswith("opaque"):
            _mark_opaque(node, verdict.split(": ", 1)[1])
            opaque += 1
    for node in list(dg.module2node.values()):  # torch-pruning's own mappings, one node at a time
        if node.type not in _MAPPED_TYPES:
            continue
        try:
            index_mapping.update_index_mapping(_OneNode(dg, node))
        except Exception as exc:  # noqa: BLE001 - any failure inside torch-pruning makes the node opaque
            _mark_opaque(node, f"torch-pruning's index mapping failed ({type(exc).__name__}: {exc})")
            opaque += 1
    return opaque


class _OneNode:
    """A view of the graph with one node, for ``index_mapping.update_index_mapping``."""

    def __init__(self, dg: Any, node: Any) -> None:
        self._dg, self.module2node = dg, {node.module: node}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dg, name)


class _CheckedGraph(tp.DependencyGraph):  # type: ignore[misc]
    """``tp.DependencyGraph`` whose index mappings are checked first (see module docstring)."""

    def build_dependency(self, model: nn.Module, example_inputs: Any, **kwargs: Any) -> _CheckedGraph:
        """Same steps as torch-pruning 1.6's ``build_dependency``, with :func:`_sanitise` before the mappings."""
        self.verbose = False
        self.model = model
        self._module2name = {module: name for (name, module) in model.named_modules()}
        self.ignored_params: list[nn.Parameter] = []
        self._param_to_name, self.unwrapped_parameters = self._detect_unwrapped_parameters(None)
        self.module2node = self._trace(model, example_inputs, None, output_transform=None)
        self._build_dependency(self.module2node)
        shape_infer.init_shape_information(self)
        self.hwprune_opaque_nodes = _sanitise(self)
        return self


def build_graph(model: nn.Module, example_inputs: Any) -> Any:
    """Trace ``model`` on ``example_inputs`` into a checked torch-pruning ``DependencyGraph``.

    Training flags are preserved (torch-pruning's tracing calls ``model.eval()``).

    Raises:
        ConfigError: the model cannot be traced (its forward or torch-pruning's tracer failed),
            naming the model and the error.
    """
    with preserve_mode(model), torch.enable_grad():
        try:
            dg = _CheckedGraph().build_dependency(model, example_inputs)
        except HwpruneError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised in the user's terms
            raise ConfigError(f"torch-pruning could not trace {type(model).__name__} "
                              f"({type(exc).__name__}: {_short(exc)}); check that the model runs on the example "
                              "input") from exc
    if dg.hwprune_opaque_nodes:
        log.info("groups: %d reshape/split/cat nodes of %s stop channel coupling", dg.hwprune_opaque_nodes,
                 type(model).__name__)
    return dg


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def iter_channel_groups(dg: Any) -> Iterator[tuple[nn.Module, Any | None, str | None]]:
    """``(root module, group or None, error)`` per coupled set, rooted at convs and Linear layers.

    Like ``DependencyGraph.get_all_groups`` (each module roots at most one set, modules already
    pruned as outputs of an earlier set are skipped), but a failure inside torch-pruning while
    collecting one set is returned as its error line instead of aborting the whole model.
    """
    visited: set[nn.Module] = set()
    for m in list(dg.module2node.keys()):
        if not isinstance(m, ROOT_TYPES) or m in visited:
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        try:
            group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except Exception as exc:  # noqa: BLE001 - one set fails, the others still get grouped
            visited.add(m)
            yield m, None, f"torch-pruning failed ({type(exc).__name__}: {_short(exc)})"
            continue
        for dep, _ in group:
            if dg.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Module):
                visited.add(dep.target.module)
        yield m, group, None
