"""Latency statistics of timing rounds, and the order in which a round times several models.

Shared by every timing backend (``hwprune.runtime.bench`` for ONNX Runtime / TensorRT,
``hwprune.runtime.openvino``); pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from hwprune.base.errors import ConfigError

__all__ = ["LatencyStats", "summarize", "round_order"]


@dataclass
class LatencyStats:
    """Latency of one model at one batch size; times in milliseconds, throughput in samples/s."""

    backend: str
    provider: str
    precision: str
    batch: int
    threads: int
    warmup: int
    iters: int
    repeats: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    throughput_per_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        """Inverse of ``to_dict``; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown LatencyStats keys {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)


def summarize(rounds_ms: Sequence[Sequence[float]], *, batch: int, meta: dict[str, Any]) -> LatencyStats:
    """Reduce per-iteration latencies of several rounds to ``LatencyStats`` (median over rounds of each statistic).

    The median over rounds is monotone, so ``min <= median <= p90 <= p99`` holds.
    """
    arrs = [np.asarray(r, dtype=np.float64) for r in rounds_ms]
    if not arrs or any(a.size == 0 for a in arrs):
        raise ConfigError("no timing samples: iters and repeats must be >= 1")
    per = np.array([[np.median(a), np.percentile(a, 90), np.percentile(a, 99), a.mean(), a.std()] for a in arrs])
    med, p90, p99, mean, std = (float(v) for v in np.median(per, axis=0))
    return LatencyStats(
        **meta, batch=batch, median_ms=med, p90_ms=p90, p99_ms=p99, mean_ms=mean, std_ms=std,
        min_ms=float(min(a.min() for a in arrs)), throughput_per_s=batch * 1000.0 / med if med > 0 else float("inf"),
        extra={"round_medians_ms": [float(v) for v in per[:, 0]]},
    )


def round_order(n: int, round_index: int, req: dict[str, Any]) -> list[int]:
    """Order in which round ``round_index`` times the ``n`` models.

    As given, or a permutation per round when the request has ``shuffle_seed`` (calibration sweeps:
    slow drift of the machine must not look like a trend over the widths).
    """
    seed = req.get("shuffle_seed")
    if seed is None:
        return list(range(n))
    return [int(i) for i in np.random.default_rng([int(seed), int(round_index)]).permutation(n)]
