"""ONNX export with a numerical contract, and an N:M sparsity-pattern check on the exported weights.

``to_onnx`` writes one self-contained ``.onnx`` file (no external data) atomically and runs the
full ONNX checker; ``validate_onnx`` compares ONNX Runtime (CPU EP) with PyTorch on *fresh* random
inputs at batch 1 and 3 and reports every output; ``check_nm_pattern`` verifies that each block of
``m`` consecutive weights along the reduction dimension has at most ``n`` nonzeros.
``onnx`` / ``onnxruntime`` / ``onnxslim`` are imported lazily.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwprune.base.errors import ConfigError, NumericalMismatchError
from hwprune.base.files import atomic_path, atomic_write_json
from hwprune.base.optional import import_optional

__all__ = ["ATOL", "RTOL", "MIN_OPSET", "ExportConfig", "ExportReport", "NMReport", "OutputShapeMismatch",
           "ToleranceExceeded", "to_onnx", "validate_onnx", "export_and_validate", "check_nm_pattern"]

ATOL = 1e-5  # fp32 ORT-vs-PyTorch absolute tolerance
RTOL = 1e-4  # fp32 ORT-vs-PyTorch relative tolerance
MIN_OPSET = 17
_DYNAMO_MIN_OPSET = 18  # the dynamo exporter's native opset; converting down fails for Reduce* ops
VALIDATION_BATCHES = (1, 3)
_SEED = 1234

Inputs = torch.Tensor | Sequence[torch.Tensor]


class OutputShapeMismatch(NumericalMismatchError):  # noqa: N818 - name fixed by the design
    """ONNX Runtime and PyTorch disagree on the number or shapes of outputs."""


class ToleranceExceeded(NumericalMismatchError):  # noqa: N818 - name fixed by the design
    """At least one output differs by more than ``atol + rtol * |reference|``."""


@dataclass(frozen=True)
class ExportConfig:
    """How to export: opset (>= 17), dynamic batch axis, tensor names, tolerances, exporter, simplifier."""

    opset: int = 17
    dynamic_batch: bool = True
    input_names: tuple[str, ...] = ("input",)
    output_names: tuple[str, ...] = ("logits",)
    atol: float = ATOL
    rtol: float = RTOL
    dynamo: bool = False
    simplify: bool = False

    def __post_init__(self) -> None:
        if int(self.opset) < MIN_OPSET:
            raise ConfigError(f"ONNX opset {self.opset} is too old; use opset >= {MIN_OPSET}")
        if not self.input_names or not self.output_names:
            raise ConfigError("input_names and output_names must each name at least one tensor")
        if self.atol < 0 or self.rtol < 0:
            raise ConfigError(f"atol and rtol must be >= 0, got atol={self.atol}, rtol={self.rtol}")
        object.__setattr__(self, "input_names", tuple(self.input_names))
        object.__setattr__(self, "output_names", tuple(self.output_names))


@dataclass
class ExportReport:
    """Result of ``validate_onnx``: one entry per (input case, output) in ``outputs``."""

    path: str
    opset: int
    checker_passed: bool
    atol: float
    rtol: float
    input_names: list[str]
    output_names: list[str]
    num_nodes: int
    outputs: list[dict[str, Any]] = field(default_factory=list)
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    passed: bool = True
    simplified: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


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


def _as_tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def _flatten_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (dict, tuple, list)):
        return [t for v in (out.values() if isinstance(out, dict) else out) for t in _flatten_outputs(v)]
    raise ConfigError(f"model output of type {type(out).__name__} is not a tensor, tuple, list or dict")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (under no_grad) and restore its previous mode afterwards."""
    was_training = model.training
    try:
        with torch.no_grad():
            yield model.eval()
    finally:
        model.train(was_training)


def _dynamic_kwargs(args: tuple[torch.Tensor, ...], n_out: int, cfg: ExportConfig) -> dict[str, Any]:
    if not cfg.dynamic_batch:
        return {}
    if cfg.dynamo:
        batch = torch.export.Dim.DYNAMIC
        return {"dynamic_shapes": tuple({0: batch} for _ in args)}
    names = list(cfg.input_names[: len(args)]) + list(cfg.output_names[:n_out])
    return {"dynamic_axes": {name: {0: "batch"} for name in names}}


def to_onnx(model: nn.Module, example_inputs: Inputs, path: str | Path, cfg: ExportConfig | None = None) -> Path:
    """Export ``model`` (in eval mode) to a single ONNX file at ``path`` and run the full checker.

    Args:
        model: the network; its train/eval mode is restored afterwards.
        example_inputs: a tensor (e.g. ``(1, C, H, W)``) or a tuple of tensors, one per input name.
        path: destination; written to a temporary file first, then moved with ``os.replace``.
        cfg: export settings; batch axis 0 of every input and output is symbolic when
            ``cfg.dynamic_batch``; with ``cfg.dynamo`` the opset is at least 18.

    Returns:
        The path written.
    """
    cfg = cfg or ExportConfig()
    onnx = import_optional("onnx", extra="onnx")
    path = Path(path)
    args = _as_tuple(example_inputs)
    if len(args) != len(cfg.input_names):
        raise ConfigError(f"{len(args)} example inputs but input_names={list(cfg.input_names)}")
    with _eval_mode(model):
        n_out = len(_flatten_outputs(model(*args)))
    if n_out != len(cfg.output_names):
        raise ConfigError(f"model returns {n_out} outputs but output_names={list(cfg.output_names)}")
    kwargs: dict[str, Any] = dict(
        input_names=list(cfg.input_names), output_names=list(cfg.output_names), dynamo=cfg.dynamo,
        opset_version=max(int(cfg.opset), _DYNAMO_MIN_OPSET) if cfg.dynamo else int(cfg.opset),
        **_dynamic_kwargs(args, n_out, cfg))
    kwargs.update(dict(external_data=False, verbose=False) if cfg.dynamo else dict(do_constant_folding=True))
    with atomic_path(path) as tmp:
        with _eval_mode(model), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, args, str(tmp), **kwargs)
        if cfg.simplify:
            _simplify_in_place(tmp, cfg)
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def _simplify_in_place(path: Path, cfg: ExportConfig) -> None:
    """Simplify with onnxslim and keep the result only if ORT outputs stay within tolerance."""
    onnx = import_optional("onnx", extra="onnx")
    onnxslim = import_optional("onnxslim", extra="onnx")
    original = onnx.load(str(path))
    slim = onnxslim.slim(original)
    if [o.name for o in slim.graph.output] != [o.name for o in original.graph.output]:
        raise NumericalMismatchError("onnxslim changed the output names; export with --no-simplify")
    sess_a = _ort_session(original.SerializeToString())
    sess_b = _ort_session(slim.SerializeToString())
    for batch in VALIDATION_BATCHES if cfg.dynamic_batch else (None,):
        feeds = _random_feeds(sess_a, batch, np.random.default_rng(_SEED))
        for name, a, b in zip(cfg.output_names, sess_a.run(None, feeds), sess_b.run(None, feeds), strict=True):
            if a.shape != b.shape or not np.allclose(b, a, atol=cfg.atol, rtol=cfg.rtol):
                raise ToleranceExceeded(f"onnxslim changed output '{name}'; export with --no-simplify")
    onnx.save(slim, str(path))


def _ort_session(model: bytes | str) -> Any:
    ort = import_optional("onnxruntime", extra="onnx")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _random_feeds(sess: Any, batch: int | None, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs shaped like the graph inputs, with the symbolic batch dim set to ``batch``."""
    from hwprune.runtime.feeds import ort_inputs, random_feeds

    return random_feeds(ort_inputs(sess), batch, rng=rng, strict_batch=False)


def _compare(name: str, case: str, ref: np.ndarray, got: np.ndarray, cfg: ExportConfig) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "case": case, "shape": list(got.shape), "torch_shape": list(ref.shape)}
    if ref.shape != got.shape:
        return {**row, "shape_ok": False, "max_abs_diff": None, "max_rel_diff": None, "ok": False}
    diff, scale = np.abs(got.astype(np.float64) - ref.astype(np.float64)), np.abs(ref.astype(np.float64))
    bad = ~(diff <= cfg.atol + cfg.rtol * scale)  # NaN counts as bad
    max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    max_rel = float(np.nanmax(diff / np.maximum(scale, 1e-12))) if diff.size else 0.0
    return {**row, "shape_ok": True, "max_abs_diff": max_abs, "max_rel_diff": max_rel,
            "num_violations": int(bad.sum()), "ok": not bool(bad.any())}


def validate_onnx(model: nn.Module, path: str | Path, cfg: ExportConfig | None = None, *,
                  inputs: Inputs | None = None) -> ExportReport:
    """Compare ONNX Runtime (CPU EP) with PyTorch on fresh random inputs (batch 1 and 3) plus ``inputs``.

    Raises:
        OutputShapeMismatch: output count or any output shape differs (lists every offender).
        ToleranceExceeded: any element violates ``|ort - torch| <= atol + rtol * |torch|``
            (lists every offending output and case).
    """
    cfg = cfg or ExportConfig()
    onnx = import_optional("onnx", extra="onnx")
    path = Path(path)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    sess = _ort_session(str(path))
    out_names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(_SEED)
    batch_dynamic = not isinstance(sess.get_inputs()[0].shape[0], int)
    cases = [(f"random_batch{b}", _random_feeds(sess, b, rng)) for b in VALIDATION_BATCHES] if batch_dynamic \
        else [("random_static", _random_feeds(sess, None, rng))]
    if inputs is not None:
        names = [i.name for i in sess.get_inputs()]
        cases.append(("given", {n: t.detach().cpu().numpy() for n, t in zip(names, _as_tuple(inputs), strict=True)}))
    rows: list[dict[str, Any]] = []
    for case, feeds in cases:
        with _eval_mode(model):
            ref = [t.detach().cpu().numpy() for t in _flatten_outputs(model(*map(torch.from_numpy, feeds.values())))]
        got = sess.run(None, feeds)
        if len(ref) != len(got):
            rows.append({"name": "<outputs>", "case": case, "shape": [len(got)], "torch_shape": [len(ref)],
                         "shape_ok": False, "ok": False})
            continue
        rows.extend(_compare(n, case, r, g, cfg) for n, r, g in zip(out_names, ref, got, strict=True))
    abs_diffs = [r["max_abs_diff"] for r in rows if r.get("max_abs_diff") is not None]
    rel_diffs = [r["max_rel_diff"] for r in rows if r.get("max_rel_diff") is not None]
    report = ExportReport(
        path=str(path), opset=max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0),
        checker_passed=True, atol=cfg.atol, rtol=cfg.rtol, input_names=[i.name for i in sess.get_inputs()],
        output_names=out_names, num_nodes=len(proto.graph.node), outputs=rows,
        max_abs_diff=max(abs_diffs, default=0.0), max_rel_diff=max(rel_diffs, default=0.0),
        passed=all(r["ok"] for r in rows), simplified=cfg.simplify,
    )
    shape_bad = [r for r in rows if not r["shape_ok"]]
    if shape_bad:
        desc = "; ".join(f"{r['name']}[{r['case']}]: onnx {r['shape']} vs torch {r['torch_shape']}" for r in shape_bad)
        raise OutputShapeMismatch(f"{len(shape_bad)} output shape mismatch(es): {desc}", shape_bad)
    tol_bad = [r for r in rows if not r["ok"]]
    if tol_bad:
        desc = "; ".join(f"{r['name']}[{r['case']}]: max abs {r['max_abs_diff']:.3g}, max rel {r['max_rel_diff']:.3g}"
                         for r in tol_bad)
        raise ToleranceExceeded(
            f"{len(tol_bad)} output(s) exceed atol={cfg.atol:g}, rtol={cfg.rtol:g}: {desc}", tol_bad)
    return report


def export_and_validate(model: nn.Module, example_inputs: Inputs, path: str | Path, cfg: ExportConfig | None = None,
                        *, report_path: str | Path | None = None) -> ExportReport:
    """``to_onnx``, then ``validate_onnx`` with ``example_inputs`` as an extra case.

    ``report_path`` (optional) gets the report JSON atomically, also on failure (``passed: false`` and every
    mismatch) before the error is re-raised.
    """
    cfg = cfg or ExportConfig()
    path = to_onnx(model, example_inputs, path, cfg)
    try:
        report = validate_onnx(model, path, cfg, inputs=example_inputs)
    except NumericalMismatchError as exc:
        if report_path is not None:
            atomic_write_json(Path(report_path), {"path": str(path), "passed": False, "error": str(exc),
                                            "mismatches": exc.mismatches, "atol": cfg.atol, "rtol": cfg.rtol})
        raise
    if report_path is not None:
        atomic_write_json(Path(report_path), report.to_dict())
    return report



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
