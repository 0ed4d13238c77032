"""Latency measurement of ONNX models on ONNX Runtime or TensorRT, always in a fresh subprocess.

What is timed (ONNX Runtime): one ``session.run(None, feeds)`` call per iteration, measured with
``time.perf_counter_ns``, with numpy inputs prepared beforehand (random normal, fixed seed). On the
CPU EP that is graph execution plus ORT's output allocation; on the CUDA EP it also includes the
host-to-device input copies, device synchronisation and the device-to-host output copies. Session
creation and ``warmup`` iterations are excluded. Each of ``repeats`` rounds uses a FRESH session;
the reported statistics are medians over rounds (``min_ms`` is the overall minimum). TensorRT: see
``hwprune.runtime.trt`` (GPU compute time between CUDA events; engine build excluded).

``compare`` times a dense and a pruned model in the same worker process, interleaved round by round,
because CPU timings move by 10-20 % between runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwprune.base.errors import (
    ConfigError,
    DataError,
    HwpruneError,
    MissingBackendError,
    NumericalMismatchError,
)
from hwprune.base.optional import import_optional
from hwprune.runtime.availability import require_backend
from hwprune.runtime.onnxfile import check_onnx_file
from hwprune.runtime.stats import LatencyStats, round_order, summarize

if TYPE_CHECKING:
    from hwprune.profiles import BenchSpec

__all__ = ["LatencyStats", "BenchWorkerError", "BACKENDS", "measure", "measure_many", "compare", "summarize",
           "run_request", "round_order"]

DEFAULT_TIMEOUT_S = 900.0
_INPUT_SEED = 0
_STDERR_LINES = 4  # last stderr lines quoted (on one line) when the worker fails


class BenchWorkerError(HwpruneError, RuntimeError):
    """The timing subprocess failed, timed out or returned malformed output (message has its stderr tail)."""


# --------------------------------------------------------------------------- worker side (runs in the subprocess)
def _feeds(inputs: Sequence[Any], batch: int, input_shape: Sequence[int] | None) -> dict[str, np.ndarray]:
    """Random numpy inputs for ORT ``NodeArg``s with the batch dim (dim 0) set to ``batch``."""
    from hwprune.runtime.feeds import InputSpec, random_feeds

    specs = [InputSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape), i.type) for i in inputs]
    return random_feeds(specs, batch, input_shape, seed=_INPUT_SEED)


def _ort_providers(ort: Any, provider: str) -> list[str]:

    require_backend("onnxruntime", provider)
    return ["CPUExecutionProvider"] if provider == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _ort_session(ort: Any, path: str, req: dict[str, Any], batch: int, providers: list[str]) -> tuple[Any, Any]:
    """A session for ``path`` (the request's threads, all graph optimisations) and its random feeds."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(req["threads"])
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(path, opts, providers=providers)
    except Exception as exc:  # onnxruntime's own errors: one line naming the file, not a worker traceback
        raise DataError(f"{path}: ONNX Runtime cannot load this model ({' '.join(str(exc).split())[:300]})") from None
    return sess, _feeds(sess.get_inputs(), batch, req.get("input_shape"))


def _time_ort_round(ort: Any, path: str, req: dict[str, Any], batch: int, providers: list[str],
                    prepared: tuple[Any, Any] | None = None) -> list[float]:
    """One round: fresh session (unless ``prepared``), ``warmup`` untimed runs, then ``iters`` timed runs (ms)."""
    from time import perf_counter_ns

    sess, feeds = prepared if prepared is not None else _ort_session(ort, path, req, batch, providers)
    for _ in range(int(req["warmup"])):
        sess.run(None, feeds)
    times = []
    for _ in range(int(req["iters"])):
        t0 = perf_counter_ns()
        sess.run(None, feeds)
        times.append((perf_counter_ns() - t0) / 1e6)
    return times


def _run_ort(paths: Sequence[str], req: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Time every model at every batch size; rounds interleave the models. Returns [model][batch] stats dicts."""
    ort = import_optional("onnxruntime", extra="onnx")
    if req["precision"] != "fp32":
        raise ConfigError(f"onnxruntime times the ONNX model as exported; precision '{req['precision']}' "
                          "is only built by --backend tensorrt (valid here: fp32)")
    providers = _ort_providers(ort, req["provider"])
    meta = _meta(req)
    out: list[list[dict[str, Any]]] = [[] for _ in paths]
    for batch in req["batch_sizes"]:
        rounds: list[list[list[float]]] = [[] for _ in paths]
        cache: dict[int, tuple[Any, Any]] = {}  # fresh_sessions False: one session per model for all rounds
        for r in range(int(req["repeats"])):
            for i in round_order(len(paths), r, req):
                prepared = None
                if not req.get("fresh_sessions", True):
                    prepared = cache.setdefault(i, _ort_session(ort, paths[i], req, batch, providers))
                rounds[i].append(_time_ort_round(ort, paths[i], req, batch, providers, prepared))
        for i in range(len(paths)):
            stats = summarize(rounds[i], batch=batch, meta=meta)
            stats.extra.update(ort_version=ort.__version__, ort_provider=providers[0])
            out[i].append(stats.to_dict())
    return out


def _run_trt(paths: Sequence[str], req: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Build one engine per (model, batch) (excluded from timing), then time fresh contexts per round."""
    from hwprune.runtime import trt as _trt

    if req["provider"] != "cuda":
        raise ConfigError(f"tensorrt runs on provider 'cuda', got '{req['provider']}'")
    ort = import_optional("onnxruntime", extra="onnx")
    meta = _meta(req)
    out: list[list[dict[str, Any]]] = [[] for _ in paths]
    for batch in req["batch_sizes"]:
        engines = []
        for path in paths:
            inp = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_inputs()[0]
            shape = tuple(_feeds([inp], batch, req.get("input_shape"))[inp.name].shape[1:])
            engine, info = _trt.build_engine(path, req["precision"], sparse=bool(req.get("trt_sparse", True)),
                                             batch_sizes=(batch,), input_name=inp.name, input_shape=shape,
                                             workspace_mb=int(req.get("workspace_mb", 1024)))
            engines.append((engine, inp.name, (batch, *shape), info))
        rounds: list[list[list[float]]] = [[] for _ in paths]
        for r in range(int(req["repeats"])):
            for i in round_order(len(engines), r, req):
                engine, name, shape, _info = engines[i]
                rounds[i].append(_trt.time_engine(engine, name, shape, warmup=int(req["warmup"]),
                                                  iters=int(req["iters"])))
        for i, (_e, _n, _s, info) in enumerate(engines):
            stats = summarize(rounds[i], batch=batch, meta=meta)
            stats.extra.update(build=info.to_dict())
            out[i].append(stats.to_dict())
    return out


def _run_openvino(paths: Sequence[str], req: dict[str, Any]) -> list[list[dict[str, Any]]]:
    from hwprune.runtime.openvino import run_openvino

    return run_openvino(paths, req)


BACKENDS: dict[str, Callable[[Sequence[str], dict[str, Any]], list[list[dict[str, Any]]]]] = {
    "onnxruntime": _run_ort,
    "openvino": _run_openvino,
    "tensorrt": _run_trt,
}


def _meta(req: dict[str, Any]) -> dict[str, Any]:
    return {"backend": req["backend"], "provider": req["provider"], "precision": req["precision"],
            "threads": int(req["threads"]), "warmup": int(req["warmup"]), "iters": int(req["iters"]),
            "repeats": int(req["repeats"])}


def run_request(req: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Execute a worker request in THIS process (used by ``hwprune.runtime.worker``)."""
    backend = req.get("backend")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'; valid: {sorted(BACKENDS)}")
    return BACKENDS[backend](list(req["paths"]), req)


# --------------------------------------------------------------------------- parent side

_ERRORS: dict[str, type[HwpruneError]] = {c.__name__: c for c in (
    HwpruneError, ConfigError, DataError, MissingBackendError, NumericalMismatchError)}


def _request(paths: Sequence[str | Path], spec: BenchSpec, batch_size: int | None,
             input_shape: Sequence[int] | None, trt_sparse: bool, shuffle_seed: int | None = None,
             fresh_sessions: bool = True) -> dict[str, Any]:
    batch_sizes = [int(batch_size)] if batch_size is not None else [int(b) for b in spec.batch_sizes]
    if not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"batch sizes must be >= 1, got {batch_sizes}")
    if spec.iters < 1 or spec.repeats < 1 or spec.warmup < 0 or spec.threads < 0:
        raise ConfigError(f"need iters >= 1, repeats >= 1, warmup >= 0, threads >= 0; got iters={spec.iters}, "
                          f"repeats={spec.repeats}, warmup={spec.warmup}, threads={spec.threads}")
    if spec.backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{spec.backend}'; valid: {sorted(BACKENDS)}")
    require_backend(spec.backend, spec.provider)
    for p in paths:
        check_onnx_file(p)  # a missing or corrupt file is one line naming it, not a worker traceback
    return {"paths": [str(Path(p).resolve()) for p in paths], "backend": spec.backend, "provider": spec.provider,
            "precision": spec.precision, "batch_sizes": batch_sizes, "warmup": int(spec.warmup),
            "iters": int(spec.iters), "repeats": int(spec.repeats), "threads": int(spec.threads),
            "input_shape": list(input_shape) if input_shape is not None else None, "trt_sparse": trt_sparse,
            "shuffle_seed": shuffle_seed, "fresh_sessions": fresh_sessions}


def _spawn(req: dict[str, Any], timeout_s: float) -> list[list[dict[str, Any]]]:
    """Run ``python -m hwprune.runtime.worker`` with ``req`` as JSON on stdin; parse JSON from stdout."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([sys.executable, "-m", "hwprune.runtime.worker"], input=json.dumps(req),
                              capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchWorkerError(f"benchmark worker timed out after {timeout_s:g} s; lower iters/repeats "
                               "or raise the timeout") from exc
    tail = " | ".join(ln.strip() for ln in proc.stderr.strip().splitlines()[-_STDERR_LINES:] if ln.strip())
    try:
        payload = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        payload = None
    if isinstance(payload, dict) and "error" in payload:
        err = payload["error"]
        raise _ERRORS.get(err.get("type"), BenchWorkerError)(err.get("message", "benchmark worker error"))
    if proc.returncode != 0 or not isinstance(payload, dict) or "results" not in payload:
        raise BenchWorkerError(f"benchmark worker failed (exit code {proc.returncode}); "
                               f"stderr tail: {tail[-2000:] or '<empty>'}")
    results: list[list[dict[str, Any]]] = payload["results"]
    return results


def measure(onnx_path: str | Path, spec: BenchSpec, *, batch_size: int | None = None,
            input_shape: Sequence[int] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
            trt_sparse: bool = True) -> list[LatencyStats]:
    """Time ``onnx_path`` with ``spec`` (backend, provider, precision, batches, warmup, iters, repeats, threads).

    Args:
        onnx_path: model with a dynamic (or matching) batch dim 0.
        spec: a ``hwprune.profiles.BenchSpec``.
        batch_size: time only this batch size instead of ``spec.batch_sizes``.
        input_shape: per-sample input shape (without batch) when the graph has other symbolic dims.
        timeout_s: wall-clock limit for the worker subprocess, in seconds.
        trt_sparse: TensorRT only: build with ``SPARSE_WEIGHTS``.

    Returns:
        One ``LatencyStats`` per batch size, in order.
    """
    req = _request([onnx_path], spec, batch_size, input_shape, trt_sparse)
    return [LatencyStats.from_dict(d) for d in _spawn(req, timeout_s)[0]]


def measure_many(onnx_paths: Sequence[str | Path], spec: BenchSpec, *, batch_size: int | None = None,
                 shuffle_seed: int | None = 0, fresh_sessions: bool = True, timeout_s: float = DEFAULT_TIMEOUT_S,
                 trt_sparse: bool = False,
                 runner: Callable[[dict[str, Any]], list[list[dict[str, Any]]]] | None = None,
                 ) -> list[list[LatencyStats]]:
    """Time many models in ONE fresh worker, interleaved round by round (order shuffled per round by default).

    Args:
        onnx_paths: the models (dynamic batch dim 0).
        spec: backend, provider, precision, batch sizes, loop counts, threads.
        batch_size: time only this batch size.
        shuffle_seed: seed of the per-round model order (None: the order given).
        fresh_sessions: a fresh ORT session / OpenVINO compile per round (False: one per model, re-timed in
            every round; calibration sweeps of hundreds of probes, where compilation would dominate).
        timeout_s: wall-clock limit of the worker, seconds.
        trt_sparse: TensorRT only: build with ``SPARSE_WEIGHTS``.
        runner: execute the request differently (tests: ``run_request`` in this process); default a subprocess.

    Returns:
        ``[model][batch]`` ``LatencyStats``; ``extra["round_medians_ms"]`` has one median per round.
    """
    req = _request(list(onnx_paths), spec, batch_size, None, trt_sparse, shuffle_seed, fresh_sessions)
    raw = runner(req) if runner is not None else _spawn(req, timeout_s)
    return [[LatencyStats.from_dict(d) for d in per_model] for per_model in raw]


def compare(dense_onnx: str | Path, pruned_onnx: str | Path, spec: BenchSpec, *, batch_size: int | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Time both models in one worker, interleaved per round; speed-up = dense median / pruned median per batch."""
    req = _request([dense_onnx, pruned_onnx], spec, batch_size, None, True)
    dense, pruned = ([LatencyStats.from_dict(d) for d in res] for res in _spawn(req, timeout_s))
    rows = [{"batch": d.batch, "dense_median_ms": d.median_ms, "pruned_median_ms": p.median_ms,
             "speedup": d.median_ms / p.median_ms if p.median_ms > 0 else float("inf")}
            for d, p in zip(dense, pruned, strict=True)]
    return {"dense_path": str(dense_onnx), "pruned_path": str(pruned_onnx),
            "dense": [s.to_dict() for s in dense], "pruned": [s.to_dict() for s in pruned], "speedup": rows}
