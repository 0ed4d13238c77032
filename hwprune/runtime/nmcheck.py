"""N:M sparsity-pattern check on the weights of an exported ONNX model.

``check_nm_pattern`` verifies that each block of ``m`` consecutive weights along the reduction
dimension of every Conv/Gemm/MatMul initializer has at most ``n`` nonzeros. ``onnx`` is imported
lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwprune.base.errors import ConfigError, NumericalMismatchError
from hwprune.base.optional import import_optional

__all__ = ["NMReport", "check_nm_pattern"]


@dataclass
class NMReport:
    """Per-tensor N:M counts from ``check_nm_pattern``; ``skipped`` names weights not stored as initializers."""

    n: int
    m: int
    tensors: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no block in any checked tensor has more than ``n`` nonzeros."""
        return all(t["violating_blocks"] == 0 for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return {**asdict(self), "ok": self.ok}


def _weight_axes(graph: Any) -> dict[str, tuple[str, str, int]]:
    """Map weight initializer name -> (node name, op type, reduction axis) for Conv/Gemm/MatMul."""
    out: dict[str, tuple[str, str, int]] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        # Conv [K, C/groups, R, S]: input channels; Gemm [out, in] if transB else [in, out]; MatMul B [..., K, N]
        axis = {"Conv": 1, "Gemm": 1 if trans_b else 0}.get(node.op_type, -2)
        out.setdefault(node.input[1], (node.name, node.op_type, axis))
    return out


def _nm_counts(w: np.ndarray, axis: int, n: int, m: int) -> dict[str, Any]:
    """Count per-block nonzeros for blocks of ``m`` consecutive entries along ``axis`` (tail zero-padded)."""
    moved = np.moveaxis(w, axis, -1)
    c = moved.shape[-1]
    rows = moved.reshape(-1, c)
    pad = (-c) % m
    if pad:
        rows = np.concatenate([rows, np.zeros((rows.shape[0], pad), dtype=rows.dtype)], axis=1)
    nnz = np.count_nonzero(rows.reshape(-1, m), axis=1)
    return {"shape": list(w.shape), "axis": axis % w.ndim, "blocks": int(nnz.size), "padded": bool(pad),
            "violating_blocks": int((nnz > n).sum()), "max_nonzeros": int(nnz.max(initial=0)),
            "nonzeros": int(np.count_nonzero(w)), "numel": int(w.size),
            "sparsity": float(1.0 - np.count_nonzero(w) / max(w.size, 1))}


def check_nm_pattern(onnx_path: str | Path, n: int, m: int, weight_names: Sequence[str] | None = None) -> NMReport:
    """Verify the N:M pattern on every Conv/Gemm/MatMul weight initializer (or only ``weight_names``).

    ``weight_names`` may be initializer or node names (``"/layer1/conv/Conv"``; BN folding renames weights).

    Blocks are ``m`` consecutive weights along the reduction dim: for a Conv weight ``[K, C, R, S]``,
    ``m`` consecutive ``C`` at fixed ``(k, r, s)``; for Gemm ``[out, in]`` (transB=1), ``m`` consecutive ``in``.

    Raises:
        ConfigError: bad ``n``/``m`` or a requested weight name that is not a Conv/Gemm/MatMul initializer.
        NumericalMismatchError: some block has more than ``n`` nonzeros (lists every violating tensor).
    """
    if not 0 < n < m:
        raise ConfigError(f"N:M pattern needs 0 < n < m, got n={n}, m={m}")
    onnx = import_optional("onnx", extra="onnx")
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    axes = _weight_axes(graph)
    by_node = {v[0]: k for k, v in axes.items() if v[0]}
    names = list(axes) if weight_names is None else [by_node.get(w, w) for w in weight_names]
    missing = [w for w in names if w not in axes or w not in inits] if weight_names is not None else []
    if missing:
        raise ConfigError(f"not a Conv/Gemm/MatMul weight initializer or node: {missing}; valid: {sorted(by_node)}")
    report = NMReport(n=n, m=m)
    for name in names:
        if name not in inits:
            report.skipped.append(name)
            continue
        node_name, op, axis = axes[name]
        counts = _nm_counts(numpy_helper.to_array(inits[name]), axis, n, m)
        report.tensors.append({"name": name, "node": node_name, "op": op, **counts})
    bad = [t for t in report.tensors if t["violating_blocks"]]
    if bad:  # every violating tensor is listed
        desc = "; ".join(f"{t['name']} at {t['node']} ({t['violating_blocks']}/{t['blocks']} blocks, "
                         f"max {t['max_nonzeros']} nonzeros)" for t in bad)
        raise NumericalMismatchError(f"{len(bad)} tensor(s) violate {n}:{m}: {desc}", bad)
    return report
