"""TensorRT runner: build an engine from ONNX (precision, 2:4 sparse tactics, optimisation profile) and time it.

``tensorrt`` is imported lazily through ``import_optional("tensorrt", extra="trt")``; ``torch`` (for
CUDA buffers, streams and events) only inside ``time_engine``. What is timed by ``time_engine``: GPU
time of one ``execute_async_v3`` between two CUDA events on a private stream, with inputs and outputs
already resident on the device (no host<->device copies; like trtexec's "GPU Compute Time").
Engine build and deserialisation are excluded.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hwprune.base.errors import ConfigError, HwpruneError
from hwprune.base.files import atomic_write_bytes, atomic_write_text
from hwprune.base.optional import import_optional

__all__ = ["BuildInfo", "EngineBuildError", "build_engine", "parse_sparsity_log", "time_engine", "PRECISIONS"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
_ELIGIBLE_RE = re.compile(r"\(Sparsity\).*?eligible for sparse math:?\s*(.*)", re.IGNORECASE)
_PICKED_RE = re.compile(r"\(Sparsity\).*?picked sparse implementation(?: for layers)?:?\s*(.*)", re.IGNORECASE)


class EngineBuildError(HwpruneError, RuntimeError):
    """TensorRT could not parse the ONNX model or build an engine; the message lists every error."""


@dataclass
class BuildInfo:
    """What ``build_engine`` did: settings, profile shapes, time, and which layers used sparse tactics."""

    precision: str
    sparse: bool
    input_name: str
    min_shape: list[int]
    opt_shape: list[int]
    max_shape: list[int]
    workspace_mb: int
    build_seconds: float
    engine_bytes: int
    tensorrt_version: str
    eligible_sparse_layers: list[str] = field(default_factory=list)
    picked_sparse_layers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    engine_path: str | None = None
    log_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


def parse_sparsity_log(messages: Iterable[str]) -> tuple[list[str], list[str]]:
    """Layer names from the builder's "(Sparsity)" lines: (eligible for sparse math, picked sparse implementation)."""
    eligible: list[str] = []
    picked: list[str] = []
    for msg in messages:
        for regex, into in ((_ELIGIBLE_RE, eligible), (_PICKED_RE, picked)):
            match = regex.search(msg)
            if match:
                into.extend(n.strip() for n in match.group(1).split(",") if n.strip() and n.strip() not in into)
    return eligible, picked


def _make_logger(trt: Any) -> Any:
    """An ``ILogger`` that records every ``(severity, message)`` it receives."""

    class _Collector(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.records: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            name = str(getattr(severity, "name", severity))  # "VERBOSE" ... "INTERNAL_ERROR"
            self.records.append((name, str(msg)))
            if name.endswith("ERROR"):
                log.error("TensorRT: %s", msg)

    return _Collector()


def _apply_precision(config: Any, precision: str, trt: Any, calibrator: Any = None) -> list[str]:
    """Set the builder flags for ``precision``; the one place precision becomes builder settings.

    fp32: no flag. fp16: ``BuilderFlag.FP16``. int8: ``BuilderFlag.INT8`` plus ``config.int8_calibrator``
    (without a calibrator only explicitly quantised Q/DQ layers run in INT8). Returns warnings.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; valid: {', '.join(PRECISIONS)}")
    notes: list[str] = []
    if precision == "fp32":
        return notes
    flag_name = precision.upper()
    if not hasattr(trt.BuilderFlag, flag_name):
        raise ConfigError(f"this TensorRT ({getattr(trt, '__version__', '?')}) has no BuilderFlag.{flag_name} "
                          "(strongly typed networks only): export the ONNX model in the target precision")
    config.set_flag(getattr(trt.BuilderFlag, flag_name))
    if precision == "int8":
        if calibrator is None:
            notes.append("int8 without a calibrator: only explicitly quantised (Q/DQ) layers run in INT8")
        else:
            config.int8_calibrator = calibrator
    return notes


def _profile_shapes(batch_sizes: Sequence[int], input_shape: Sequence[int]) -> tuple[list[int], ...]:
    """(min, opt, max) shapes: min = smallest batch, opt = max = largest batch; ``input_shape`` excludes batch."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    rest = [int(d) for d in input_shape]
    lo, hi = int(min(batch_sizes)), int(max(batch_sizes))
    return [lo, *rest], [hi, *rest], [hi, *rest]


def build_engine(onnx_path: str | Path, precision: str, *, sparse: bool, batch_sizes: Sequence[int],
                 input_name: str, input_shape: Sequence[int], workspace_mb: int = 1024,
                 int8_calibrator: Any = None, log_path: str | Path | None = None,
                 engine_path: str | Path | None = None) -> tuple[bytes, BuildInfo]:
    """Build a serialized TensorRT engine from an ONNX file.

    Args:
        onnx_path: the model (explicit batch dim 0).
        precision: "fp32", "fp16" or "int8" (see ``_apply_precision``).
        sparse: set ``BuilderFlag.SPARSE_WEIGHTS`` (2:4 tactics are considered, and picked only if faster).
        batch_sizes: batch sizes the optimisation profile must cover.
        input_name: the network input the profile applies to.
        input_shape: per-sample input shape, without the batch dim (e.g. ``(3, 32, 32)``).
        workspace_mb: workspace memory-pool limit in MiB.
        int8_calibrator: a ``trt.IInt8Calibrator`` for int8.
        log_path: write the full builder log here (atomically).
        engine_path: write the engine bytes here (atomically).

    Returns:
        ``(engine_bytes, BuildInfo)``; ``BuildInfo`` lists layers eligible for / using sparse tactics.

    Long and with ten parameters: TensorRT's builder configuration (precision, sparsity, profiles, workspace) in
    the order the API needs it.
    """
    trt = import_optional("tensorrt", extra="trt")
    min_s, opt_s, max_s = _profile_shapes(batch_sizes, input_shape)
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT >= 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {len(errors)} error(s): " + " | ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    notes = _apply_precision(config, precision, trt, int8_calibrator)
    if sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, min_s, opt_s, max_s)
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    messages = [m for _, m in logger.records]
    if log_path is not None:
        atomic_write_text(Path(log_path), "".join(f"[{s}] {m}\n" for s, m in logger.records))
    if serialized is None:
        errs = [m for s, m in logger.records if s.endswith("ERROR")][-5:]
        raise EngineBuildError(f"TensorRT engine build failed for {onnx_path}: " + (" | ".join(errs) or "no log"))
    engine = bytes(serialized)
    if engine_path is not None:
        atomic_write_bytes(Path(engine_path), bytes(engine))
    eligible, picked = parse_sparsity_log(messages)
    info = BuildInfo(
        precision=precision, sparse=sparse, input_name=input_name, min_shape=min_s, opt_shape=opt_s,
        max_shape=max_s, workspace_mb=int(workspace_mb), build_seconds=seconds, engine_bytes=len(engine),
        tensorrt_version=str(getattr(trt, "__version__", "unknown")), eligible_sparse_layers=eligible,
        picked_sparse_layers=picked, warnings=notes,
        engine_path=str(engine_path) if engine_path is not None else None,
        log_path=str(log_path) if log_path is not None else None,
    )
    return engine, info


def time_engine(engine_bytes: bytes, input_name: str, input_shape: Sequence[int], *, warmup: int = 10,
                iters: int = 100) -> list[float]:
    """GPU latency (ms) of ``iters`` runs of a fresh execution context; ``input_shape`` includes the batch."""
    trt = import_optional("tensorrt", extra="trt")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("TensorRT timing needs a CUDA device; none is visible to torch")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EngineBuildError("TensorRT could not deserialize the engine")
    context = engine.create_execution_context()
    context.set_input_shape(input_name, tuple(int(d) for d in input_shape))
    dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT8: torch.int8,
              trt.DataType.INT32: torch.int32, trt.DataType.BOOL: torch.bool}
    buffers = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(context.get_tensor_shape(name))
        buf = torch.empty(shape, dtype=dtypes[engine.get_tensor_dtype(name)], device="cuda")
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT and buf.is_floating_point():
            buf.normal_()
        context.set_tensor_address(name, buf.data_ptr())
        buffers.append(buf)  # keep alive
    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # torch stubs leave it untyped
    times: list[float] = []
    with torch.cuda.stream(stream):
        for i in range(warmup + iters):
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record(stream)
            if not context.execute_async_v3(stream.cuda_stream):
                raise EngineBuildError("TensorRT execute_async_v3 failed")
            end.record(stream)
            end.synchronize()
            if i >= warmup:
                times.append(float(start.elapsed_time(end)))
    return times
