"""A small fake of the ``tensorrt`` Python API that records every builder call (TensorRT is not installable here).

Use ``make_module(...)`` and put the result in ``sys.modules["tensorrt"]`` (``monkeypatch.setitem``). Every call
is appended to ``module.calls`` as ``(name, args)``; the builder replays ``log_messages`` to the logger it was
given during ``build_serialized_network`` and returns ``engine`` (or None to simulate a failed build).
"""

from __future__ import annotations

import enum
import types
from typing import Any

__all__ = ["make_module", "SPARSITY_LOG"]

SPARSITY_LOG = [
    "(Sparsity) Layers eligible for sparse math: /conv1/Conv, /conv2/Conv, /fc/Gemm",
    "(Sparsity) TRT inference plan picked sparse implementation for layers: /conv2/Conv",
]


def make_module(*, parse_ok: bool = True, parser_errors: tuple[str, ...] = ("unsupported op Foo",),
                engine: bytes | None = b"FAKE-ENGINE-BYTES", log_messages: list[str] | None = None,
                explicit_batch_flag: bool = True) -> types.ModuleType:
    """Build a fresh fake ``tensorrt`` module; ``module.calls`` records the API calls in order."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0-fake"
    calls: list[tuple[str, tuple[Any, ...]]] = []
    trt.calls = calls

    class _Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        Severity = _Severity

        def __init__(self) -> None:
            calls.append(("ILogger.__init__", ()))

        def log(self, severity: _Severity, msg: str) -> None:  # pragma: no cover - overridden
            raise NotImplementedError

    class Logger(ILogger):
        WARNING = _Severity.WARNING

        def __init__(self, min_severity: _Severity = _Severity.WARNING) -> None:
            super().__init__()
            self.min_severity = min_severity

        def log(self, severity: _Severity, msg: str) -> None:
            pass

    BuilderFlag = enum.Enum("BuilderFlag", ["FP16", "INT8", "SPARSE_WEIGHTS", "TF32", "STRICT_TYPES"])  # noqa: N806
    MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "TACTIC_SHARED_MEMORY"])  # noqa: N806
    names = ["EXPLICIT_BATCH", "STRONGLY_TYPED"] if explicit_batch_flag else ["STRONGLY_TYPED"]
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", names, start=0)  # noqa: N806

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags

    class OptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, Any, Any]] = {}

        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TRT's names
            calls.append(("profile.set_shape", (name, tuple(min), tuple(opt), tuple(max))))
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class BuilderConfig:
        def __init__(self) -> None:
            self.flags: set[Any] = set()
            self.pool_limits: dict[Any, int] = {}
            self.profiles: list[OptimizationProfile] = []
            self._calibrator: Any = None

        def set_flag(self, flag: Any) -> None:
            calls.append(("config.set_flag", (flag,)))
            self.flags.add(flag)

        def get_flag(self, flag: Any) -> bool:
            return flag in self.flags

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            calls.append(("config.set_memory_pool_limit", (pool, size)))
            self.pool_limits[pool] = size

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            calls.append(("config.add_optimization_profile", (profile,)))
            self.profiles.append(profile)
            return len(self.profiles) - 1

        @property
        def int8_calibrator(self) -> Any:
            return self._calibrator

        @int8_calibrator.setter
        def int8_calibrator(self, cal: Any) -> None:
            calls.append(("config.int8_calibrator", (cal,)))
            self._calibrator = cal

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            if not isinstance(logger, ILogger):
                raise TypeError("Builder needs an ILogger")
            calls.append(("Builder", (logger,)))
            self.logger = logger
            trt.last_builder = self

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("builder.create_network", (flags,)))
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            calls.append(("builder.create_builder_config", ()))
            self.config = BuilderConfig()
            return self.config

        def create_optimization_profile(self) -> OptimizationProfile:
            calls.append(("builder.create_optimization_profile", ()))
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
            calls.append(("builder.build_serialized_network", (network, config)))
            for msg in log_messages or []:
                self.logger.log(_Severity.INFO, msg)
            if engine is None:
                self.logger.log(_Severity.ERROR, "fake build failure: no tactic")
            return engine

    class ParserError:
        def __init__(self, text: str) -> None:
            self.text = text

        def __str__(self) -> str:
            return f"In node 0 (parse): {self.text}"

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            calls.append(("OnnxParser", (network, logger)))
            self.num_errors = 0

        def parse(self, model: bytes, path: str | None = None) -> bool:
            if not isinstance(model, (bytes, bytearray)):
                raise TypeError("parse() takes the serialized ONNX bytes")
            calls.append(("parser.parse", (len(model),)))
            if parse_ok:
                return True
            self.num_errors = len(parser_errors)
            return False

        def get_error(self, i: int) -> ParserError:
            return ParserError(parser_errors[i])

    for obj in (ILogger, Logger, Builder, OnnxParser, BuilderFlag, MemoryPoolType, NetworkDefinitionCreationFlag):
        setattr(trt, obj.__name__, obj)
    return trt
