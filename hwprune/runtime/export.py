"""ONNX export with a numerical contract and an exporter fallback.

``to_onnx`` writes one self-contained ``.onnx`` file (no external data) atomically and runs the
full ONNX checker; ``validate_onnx`` compares ONNX Runtime (CPU EP) with PyTorch on *fresh* random
inputs at batch 1 and 3 and reports every output. Both exporters are tried before giving up: the
configured one first (TorchScript by default, ``ExportConfig.dynamo`` for ``torch.export``), then
the other; ``export_and_validate`` also moves on when the first exporter's model fails the parity
check. The report records which exporter produced the file and why the first was dropped; when
both fail, ``ExportFailed`` is one line naming the model, the failing op and what to try.
``nn.MultiheadAttention``'s fused fast path is off while exporting (no ONNX op exists for it).
``check_nm_pattern`` (re-exported from ``hwprune.runtime.nmcheck``) checks N:M patterns.
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
from hwprune.runtime.nmcheck import NMReport, check_nm_pattern

__all__ = ["ATOL", "RTOL", "MIN_OPSET", "EXPORTERS", "ExportConfig", "ExportReport", "ExportFailed", "NMReport",
           "OutputShapeMismatch", "ToleranceExceeded", "to_onnx", "export_onnx", "validate_onnx",
           "export_and_validate", "check_nm_pattern"]

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


class ExportFailed(ConfigError):  # noqa: N818 - reads as the event, like the two above
    """Neither ONNX exporter produced a checked file; the message names the model, the op and what to try."""


EXPORTERS = ("torchscript", "dynamo")


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
    exporter: str = "torchscript"
    fallback_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


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


def _dynamic_kwargs(args: tuple[torch.Tensor, ...], n_out: int, cfg: ExportConfig, dynamo: bool) -> dict[str, Any]:
    if not cfg.dynamic_batch:
        return {}
    if dynamo:
        batch = torch.export.Dim.DYNAMIC
        return {"dynamic_shapes": tuple({0: batch} for _ in args)}
    names = list(cfg.input_names[: len(args)]) + list(cfg.output_names[:n_out])
    return {"dynamic_axes": {name: {0: "batch"} for name in names}}


@contextlib.contextmanager
def _export_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, no_grad, no DeprecationWarnings and no fused MultiheadAttention fast path."""
    mha = getattr(torch.backends, "mha", None)
    was = mha.get_fastpath_enabled() if mha is not None else None
    try:
        if mha is not None:
            mha.set_fastpath_enabled(False)
        with _eval_mode(model), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        if mha is not None and was is not None:
            mha.set_fastpath_enabled(was)


def _export_once(model: nn.Module, args: tuple[torch.Tensor, ...], tmp: Path, cfg: ExportConfig, n_out: int,
                 exporter: str) -> None:
    dynamo = exporter == "dynamo"
    if dynamo and cfg.dynamic_batch and args and int(args[0].shape[0]) == 1:
        args = tuple(torch.cat([a, a]) for a in args)  # torch.export specialises a batch of 1
    kwargs: dict[str, Any] = dict(
        input_names=list(cfg.input_names), output_names=list(cfg.output_names), dynamo=dynamo,
        opset_version=max(int(cfg.opset), _DYNAMO_MIN_OPSET) if dynamo else int(cfg.opset),
        **_dynamic_kwargs(args, n_out, cfg, dynamo))
    kwargs.update(dict(external_data=False, verbose=False) if dynamo else dict(do_constant_folding=True))
    with _export_mode(model):
        torch.onnx.export(model, args, str(tmp), **kwargs)


def _one_line(exc: BaseException, limit: int = 240) -> str:
    """The first sentence of an exporter error (its graph dumps and stack frames dropped)."""
    text = str(exc).split("[Caused by", 1)[0]
    text = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hint(errors: Sequence[str]) -> str:
    text = " ".join(errors)
    if "adaptive_avg_pool" in text or "adaptive_max_pool" in text:
        return "use an input size whose feature map is a multiple of the adaptive pool's output size"
    if "opset" in text.lower():
        return "try a newer opset (ExportConfig(opset=18) / --opset 18)"
    return "check that the model runs in eval mode on the example input; replace the named op or keep it in PyTorch"


def _order(cfg: ExportConfig) -> tuple[str, ...]:
    return ("dynamo", "torchscript") if cfg.dynamo else EXPORTERS


def export_onnx(model: nn.Module, example_inputs: Inputs, path: str | Path, cfg: ExportConfig | None = None,
                *, exporters: Sequence[str] | None = None) -> tuple[Path, str, str]:
    """Export with the first exporter that succeeds; returns ``(path, exporter, why the others failed)``.

    Args:
        model: the network; its train/eval mode is restored afterwards.
        example_inputs: a tensor (e.g. ``(1, C, H, W)``) or a tuple of tensors, one per input name.
        path: destination; written to a temporary file first, then moved with ``os.replace``.
        cfg: export settings; batch axis 0 of every input and output is symbolic when
            ``cfg.dynamic_batch``; the dynamo exporter uses opset >= 18.
        exporters: names from ``EXPORTERS`` in the order to try (default: ``cfg.dynamo`` decides
            which comes first).

    Raises:
        ExportFailed: every exporter failed (one line: model, each exporter's error, what to try).
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
    errors: list[str] = []
    for exporter in exporters or _order(cfg):
        try:
            with atomic_path(path) as tmp:
                _export_once(model, args, tmp, cfg, n_out, exporter)
                if cfg.simplify:
                    _simplify_in_place(tmp, cfg)
                onnx.checker.check_model(str(tmp), full_check=True)
        except NumericalMismatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the next exporter
            errors.append(f"{exporter}: {_one_line(exc)}")
            continue
        return path, exporter, "; ".join(errors)
    raise ExportFailed(f"ONNX export of {type(model).__name__} failed with every exporter ({'; '.join(errors)}); "
                       f"{_hint(errors)}")


def to_onnx(model: nn.Module, example_inputs: Inputs, path: str | Path, cfg: ExportConfig | None = None) -> Path:
    """Export ``model`` (in eval mode) to a single checked ONNX file at ``path`` (see :func:`export_onnx`).

    Returns:
        The path written.
    """
    return export_onnx(model, example_inputs, path, cfg)[0]


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
    """``export_onnx``, then ``validate_onnx`` with ``example_inputs`` as an extra case.

    If the file of the first exporter fails the parity check, the other exporter is tried; the
    report says which exporter produced the file (``exporter``) and why the first one was dropped
    (``fallback_reason``). ``report_path`` (optional) gets the report JSON atomically, also on
    failure (``passed: false`` and every mismatch) before the error is re-raised.
    """
    cfg = cfg or ExportConfig()
    order = list(_order(cfg))
    failures: list[str] = []
    while True:
        path, exporter, why = export_onnx(model, example_inputs, path, cfg, exporters=order)
        failures += [why] if why else []
        try:
            report = validate_onnx(model, path, cfg, inputs=example_inputs)
            break
        except NumericalMismatchError as exc:
            rest = order[order.index(exporter) + 1:]
            if not rest:
                if report_path is not None:
                    atomic_write_json(Path(report_path), {
                        "path": str(path), "passed": False, "error": str(exc), "mismatches": exc.mismatches,
                        "atol": cfg.atol, "rtol": cfg.rtol, "exporter": exporter,
                        "fallback_reason": "; ".join(failures)})
                raise
            failures.append(f"{exporter}: {' '.join(str(exc).split())[:200]}")
            order = rest
    report.exporter, report.fallback_reason = exporter, "; ".join(failures)
    if report_path is not None:
        atomic_write_json(Path(report_path), report.to_dict())
    return report
