"""OpenVINO backend: time exported ONNX models on OpenVINO's CPU device, and check its outputs against PyTorch.

``openvino`` (pip extra ``hwprune[openvino]``) is imported lazily, only inside these functions.
What is timed: one ``InferRequest.infer()`` call per iteration (``time.perf_counter_ns``) with the
input tensors already set on the request (random normal, seed 0), i.e. graph execution on the CPU
plugin with its output allocation; model reading and compilation and ``warmup`` iterations are
excluded. Each of ``repeats`` rounds compiles the model afresh (like ORT's fresh session per round),
models are interleaved round by round (a request with ``fresh_sessions: false``, as calibration sweeps send,
compiles each model once and re-times it every round). Compilation settings: ``INFERENCE_NUM_THREADS`` = threads
(0 = plugin default), ``PERFORMANCE_HINT`` = ``LATENCY`` (one stream), ``INFERENCE_PRECISION_HINT``
= ``f32`` (the CPU plugin otherwise runs bf16 on CPUs that have it, which breaks fp32 parity). The
values the plugin actually used are read back and recorded in ``LatencyStats.extra``.

``validate_openvino`` runs OpenVINO and PyTorch on the same fresh random inputs (batch 1 and 3) and
compares every output with the named ``OV_ATOL`` / ``OV_RTOL`` contract, listing every mismatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwprune.base.errors import ConfigError, NumericalMismatchError
from hwprune.base.optional import import_optional
from hwprune.runtime.feeds import InputSpec, random_feeds
from hwprune.runtime.stats import round_order, summarize

if TYPE_CHECKING:
    from torch import nn

__all__ = ["OV_ATOL", "OV_RTOL", "OV_DEVICE", "PERFORMANCE_HINT", "PARITY_BATCHES", "compile_config",
           "ov_inputs", "run_openvino", "openvino_outputs", "validate_openvino", "openvino_version"]

OV_ATOL = 1e-5  # fp32 OpenVINO-vs-PyTorch absolute tolerance (same contract as ORT's)
OV_RTOL = 1e-4  # fp32 OpenVINO-vs-PyTorch relative tolerance
OV_DEVICE = "CPU"
PERFORMANCE_HINT = "LATENCY"
PARITY_BATCHES = (1, 3)
_PARITY_SEED = 1234
_PRECISION_HINTS = {"fp32": "f32"}
_OV_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)", "i64": "tensor(int64)",
             "i32": "tensor(int32)", "i8": "tensor(int8)", "u8": "tensor(uint8)", "boolean": "tensor(bool)"}


def _ov() -> Any:
    return import_optional("openvino", extra="openvino")


def openvino_version() -> str:
    """The installed OpenVINO's version string (imports openvino)."""
    return str(_ov().__version__)


def compile_config(threads: int, precision: str = "fp32") -> dict[str, Any]:
    """``compile_model`` properties for ``threads`` (0 = plugin default) and ``precision`` (fp32 only)."""
    if precision not in _PRECISION_HINTS:
        raise ConfigError(f"backend openvino times fp32 models here; precision '{precision}' is not supported "
                          f"(valid: {', '.join(_PRECISION_HINTS)})")
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": PERFORMANCE_HINT,
                           "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision]}
    if int(threads) > 0:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


def ov_inputs(compiled: Any) -> list[InputSpec]:
    """``InputSpec``s of a compiled model's inputs (dynamic dims as ``None``)."""
    out = []
    for port in compiled.inputs:
        dims = tuple(int(d.get_length()) if d.is_static else None for d in port.get_partial_shape())
        kind = port.get_element_type().get_type_name()
        if kind not in _OV_TYPES:
            raise ConfigError(f"input '{port.get_any_name()}' has OpenVINO type {kind}; valid: {sorted(_OV_TYPES)}")
        out.append(InputSpec(port.get_any_name(), dims, _OV_TYPES[kind]))
    return out


def _compile(core: Any, path: str, threads: int, precision: str) -> Any:
    try:
        return core.compile_model(core.read_model(path), OV_DEVICE, compile_config(threads, precision))
    except RuntimeError as exc:  # OpenVINO raises RuntimeError for unreadable/unsupported models
        raise ConfigError(f"OpenVINO could not compile {path}: {' '.join(str(exc).split())[:300]}") from None


def _prepare(core: Any, path: str, req: dict[str, Any], batch: int) -> tuple[Any, Any]:
    """Compile ``path`` and make an infer request with random inputs set: ``(compiled, request)``."""
    ov = _ov()
    compiled = _compile(core, path, int(req["threads"]), str(req["precision"]))
    request = compiled.create_infer_request()
    feeds = random_feeds(ov_inputs(compiled), batch, req.get("input_shape"))
    for i, arr in enumerate(feeds.values()):
        request.set_input_tensor(i, ov.Tensor(arr))
    return compiled, request


def _time_round(core: Any, path: str, req: dict[str, Any], batch: int,
                prepared: tuple[Any, Any] | None = None) -> tuple[list[float], dict[str, Any]]:
    """One round: fresh compile (unless ``prepared``), ``warmup`` untimed, ``iters`` timed ``infer()`` calls (ms)."""
    from time import perf_counter_ns

    compiled, request = prepared if prepared is not None else _prepare(core, path, req, batch)
    for _ in range(int(req["warmup"])):
        request.infer()
    times = []
    for _ in range(int(req["iters"])):
        t0 = perf_counter_ns()
        request.infer()
        times.append((perf_counter_ns() - t0) / 1e6)
    used = {"openvino_threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
            "inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
            "num_streams": int(compiled.get_property("NUM_STREAMS"))}
    return times, used


def run_openvino(paths: Sequence[str], req: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Worker runner (``hwprune.runtime.bench.BACKENDS["openvino"]``): [model][batch] ``LatencyStats`` dicts."""
    ov = _ov()
    if req["provider"] != "cpu":
        raise ConfigError(f"openvino runs on provider 'cpu' (device {OV_DEVICE}), got '{req['provider']}'")
    compile_config(int(req["threads"]), str(req["precision"]))  # validate before any work
    core = ov.Core()
    meta = {k: req[k] for k in ("backend", "provider", "precision")}
    meta.update({k: int(req[k]) for k in ("threads", "warmup", "iters", "repeats")})
    out: list[list[dict[str, Any]]] = [[] for _ in paths]
    for batch in req["batch_sizes"]:
        rounds: list[list[list[float]]] = [[] for _ in paths]
        used: dict[str, Any] = {}
        cache: dict[int, tuple[Any, Any]] = {}  # fresh_sessions False: compile once, re-time every round
        for r in range(int(req["repeats"])):
            for i in round_order(len(paths), r, req):
                prepared = None
                if not req.get("fresh_sessions", True):
                    prepared = cache.setdefault(i, _prepare(core, paths[i], req, int(batch)))
                times, used = _time_round(core, paths[i], req, int(batch), prepared)
                rounds[i].append(times)
        for i in range(len(paths)):
            stats = summarize(rounds[i], batch=int(batch), meta=meta)
            stats.extra.update(openvino_version=str(ov.__version__), openvino_device=OV_DEVICE, **used)
            out[i].append(stats.to_dict())
    return out


def openvino_outputs(path: str | Path, feeds: dict[str, np.ndarray], *, threads: int = 1) -> list[np.ndarray]:
    """Outputs of ``path`` on OpenVINO's CPU device (fp32) for the named ``feeds``, in output order."""
    core = _ov().Core()
    compiled = _compile(core, str(path), threads, "fp32")
    result = compiled.create_infer_request().infer(list(feeds.values()))
    return [np.asarray(result[port]) for port in compiled.outputs]


def validate_openvino(model: nn.Module, path: str | Path, *, atol: float = OV_ATOL, rtol: float = OV_RTOL,
                      input_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """Compare OpenVINO (CPU, fp32) with PyTorch on fresh random inputs at batch 1 and 3.

    Returns:
        ``{"path", "atol", "rtol", "openvino_version", "outputs": [rows], "max_abs_diff", "passed"}``;
        one row per (batch, output): name, case, shape, max_abs_diff, num_violations, ok.

    Raises:
        NumericalMismatchError: any element violates ``|ov - torch| <= atol + rtol * |torch|`` or a shape
            differs; ``mismatches`` lists every offending row.
    """
    import torch

    ov = _ov()
    compiled = _compile(ov.Core(), str(path), 1, "fp32")
    specs = ov_inputs(compiled)
    names = [p.get_any_name() for p in compiled.outputs]
    rng = np.random.default_rng(_PARITY_SEED)
    rows: list[dict[str, Any]] = []
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for batch in PARITY_BATCHES:
            feeds = random_feeds(specs, batch, input_shape, rng=rng, strict_batch=False)
            with torch.no_grad():
                ref = model(*[torch.from_numpy(a) for a in feeds.values()])
            refs = [t.detach().cpu().numpy() for t in (ref if isinstance(ref, (tuple, list)) else (ref,))]
            got = openvino_outputs(path, feeds)
            for name, r, g in zip(names, refs, got, strict=False):
                rows.append(_row(name, f"random_batch{batch}", r, g, atol, rtol))
            if len(refs) != len(got):
                rows.append({"name": "<outputs>", "case": f"random_batch{batch}", "shape": [len(got)],
                             "torch_shape": [len(refs)], "max_abs_diff": None, "num_violations": None, "ok": False})
    finally:
        for m, flag in flags:
            m.training = flag
    bad = [r for r in rows if not r["ok"]]
    report = {"path": str(path), "atol": atol, "rtol": rtol, "openvino_version": str(ov.__version__),
              "outputs": rows, "max_abs_diff": max((r["max_abs_diff"] or 0.0 for r in rows), default=0.0),
              "passed": not bad}
    if bad:
        desc = "; ".join(f"{r['name']}[{r['case']}]: shape {r['shape']} vs {r['torch_shape']}, "
                         f"max abs {r['max_abs_diff']}" for r in bad)
        raise NumericalMismatchError(f"OpenVINO vs PyTorch: {len(bad)} output(s) exceed atol={atol:g}, "
                                     f"rtol={rtol:g} in {path}: {desc}", bad)
    return report


def _row(name: str, case: str, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "case": case, "shape": list(got.shape), "torch_shape": list(ref.shape)}
    if ref.shape != got.shape:
        return {**row, "max_abs_diff": None, "num_violations": None, "ok": False}
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    bad = ~(diff <= atol + rtol * np.abs(ref.astype(np.float64)))  # NaN counts as bad
    return {**row, "max_abs_diff": float(np.nanmax(diff)) if diff.size else 0.0, "num_violations": int(bad.sum()),
            "ok": not bool(bad.any())}
