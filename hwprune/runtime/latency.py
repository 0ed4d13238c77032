"""Per-layer latency tables: each conv/linear timed alone at several output widths, cached on disk.

``build_latency_table(model, profile, example_inputs)`` records every ``Conv2d`` / ``Linear``
input shape with forward hooks, exports each layer alone (seeded weights, its real input shape)
with ``hwprune.runtime.export.to_onnx`` at a grid of output widths (multiples of the layer's group block,
at most ``max_points`` of them, always the full width) and times it with ``hwprune.runtime.bench.measure``
(a fresh subprocess per timing, batch 1 by default; the median in ms is stored). A depthwise conv
shrinks its input channels with its output channels. Timings are cached as JSON keyed by the layer
signature at that width (type, channels, kernel, stride, padding, dilation, groups, bias, input
shape), backend, provider, precision, threads, batch and a machine fingerprint (cpu model, core
count, onnxruntime version; GPU name for cuda); any change in the key is a cache miss.

``LatencyTable.cost(layer, width)`` interpolates linearly between measured widths (clamped to the
measured range); ``marginal(layer, width, block)`` is ``cost(width) - cost(width - block)``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwprune.base.errors import ConfigError, DataError
from hwprune.base.files import atomic_write_text
from hwprune.profiles import BenchSpec, HardwareProfile

__all__ = ["LayerSpec", "LayerCurve", "LatencyTable", "LatencyCache", "TimeFn", "CACHE_VERSION",
           "record_layers", "ort_time_layer", "machine_fingerprint", "width_grid", "build_latency_table",
           "default_cache_path", "table_bench_spec"]

CACHE_VERSION = 1
_SEED = 0


def _pair(t: tuple[int, ...]) -> tuple[int, int]:
    """A 2-d convolution argument (h, w) from a stored tuple of two ints."""
    if len(t) != 2:
        raise ValueError(f"expected a pair (h, w), got {t}")
    return int(t[0]), int(t[1])


@dataclass(frozen=True)
class LayerSpec:
    """Signature of one conv/linear layer; ``input_shape`` excludes the batch dim ((C, H, W) or (F,))."""

    kind: str  # "conv" | "linear"
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = True
    input_shape: tuple[int, ...] = ()

    @property
    def depthwise(self) -> bool:
        """True for a depthwise conv (groups == in == out > 1): its input shrinks with its output."""
        return self.kind == "conv" and self.groups == self.in_channels == self.out_channels > 1

    def at_width(self, width: int) -> LayerSpec:
        """The same layer with ``width`` output channels (a depthwise conv also gets ``width`` inputs)."""
        width = int(width)
        if width < 1:
            raise ConfigError(f"layer width must be >= 1, got {width}")
        if self.depthwise:
            return dataclasses.replace(self, in_channels=width, out_channels=width, groups=width,
                                       input_shape=(width, *self.input_shape[1:]))
        if width % self.groups:
            raise ConfigError(f"width {width} is not a multiple of the conv's groups={self.groups}")
        return dataclasses.replace(self, out_channels=width)

    def key(self) -> dict[str, Any]:
        """JSON-serialisable signature (part of the cache key)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def build(self) -> nn.Module:
        """A seeded module with this signature (eval mode)."""
        torch.manual_seed(_SEED)
        if self.kind == "linear":
            mod: nn.Module = nn.Linear(self.in_channels, self.out_channels, bias=self.bias)
        else:
            pair = _pair  # the signature stores 2-d convolutions' (h, w) tuples
            mod = nn.Conv2d(self.in_channels, self.out_channels, pair(self.kernel), pair(self.stride),
                            pair(self.padding), pair(self.dilation), self.groups, bias=self.bias)
        return mod.eval()

    @classmethod
    def of(cls, module: nn.Module, input_shape: Sequence[int]) -> LayerSpec:
        """Signature of ``module`` (``nn.Conv2d`` or ``nn.Linear``) fed inputs of ``input_shape``."""
        shape = tuple(int(s) for s in input_shape)
        if isinstance(module, nn.Linear):
            return cls("linear", module.in_features, module.out_features, bias=module.bias is not None,
                       input_shape=shape)
        if isinstance(module, nn.Conv2d) and isinstance(module.padding, tuple):
            return cls("conv", module.in_channels, module.out_channels, tuple(module.kernel_size),
                       tuple(module.stride), tuple(int(p) for p in module.padding), tuple(module.dilation),
                       module.groups, module.bias is not None, shape)
        raise ConfigError(f"cannot time {type(module).__name__} alone; valid: Conv2d (numeric padding), Linear")


def record_layers(model: nn.Module, example_inputs: Any) -> dict[str, LayerSpec]:
    """Module name -> ``LayerSpec`` of every ``Conv2d`` / ``Linear`` that runs on ``example_inputs``."""
    found: dict[str, LayerSpec] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            def hook(m: nn.Module, args: tuple[Any, ...], _out: Any, name: str = name) -> None:
                found.setdefault(name, LayerSpec.of(m, tuple(args[0].shape[1:])))
            hooks.append(mod.register_forward_hook(hook))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
            model(*args)
    finally:
        for h in hooks:
            h.remove()
        for m, flag in flags:
            m.training = flag
    order = [n for n, _ in model.named_modules()]
    return {n: found[n] for n in order if n in found}


TimeFn = Callable[[LayerSpec, BenchSpec, int], float]
"""(layer signature, bench spec, batch) -> median latency in ms."""


def ort_time_layer(spec: LayerSpec, bench: BenchSpec, batch: int) -> float:
    """Export ``spec`` alone to a temporary ONNX file and time it in a fresh subprocess (median ms)."""
    from hwprune.runtime.bench import measure
    from hwprune.runtime.export import ExportConfig, to_onnx

    mod = spec.build()
    with tempfile.TemporaryDirectory(prefix="hwprune-lat-") as tmp:
        path = Path(tmp) / "layer.onnx"
        to_onnx(mod, torch.randn(1, *spec.input_shape), path, ExportConfig(output_names=("output",)))
        return float(measure(path, bench, batch_size=batch)[0].median_ms)


def machine_fingerprint(provider: str = "cpu") -> dict[str, Any]:
    """CPU model, core count, onnxruntime version (and the GPU name for provider cuda)."""
    from hwprune.runtime.envinfo import collect_env

    env = collect_env(include_gpu=provider == "cuda")
    fp = {"cpu_model": env.get("cpu_model"), "cores": env.get("physical_cores") or env.get("logical_cores"),
          "ort": (env.get("versions") or {}).get("onnxruntime")}
    if provider == "cuda":
        fp["gpu"] = env.get("gpu")
    return fp


def default_cache_path() -> Path:
    """``$HWPRUNE_LATENCY_CACHE`` or ``~/.cache/hwprune/latency_cache.json``."""
    env = os.environ.get("HWPRUNE_LATENCY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "hwprune" / "latency_cache.json"


class LatencyCache:
    """JSON file of timings: ``{"version", "entries": {sha1(key): {"key": {...}, "ms": float}}}``."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        self.hits = self.misses = 0
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise DataError(f"{self.path}: corrupt latency cache ({exc}); delete it to re-measure") from None
            if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
                self.entries = dict(data.get("entries", {}))

    @staticmethod
    def digest(key: Mapping[str, Any]) -> str:
        """Stable hash of a key dict."""
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def get(self, key: Mapping[str, Any]) -> float | None:
        """Cached ms for ``key`` or None (the stored key must match exactly)."""
        hit = self.entries.get(self.digest(key))
        if hit is not None and hit.get("key") == json.loads(json.dumps(key)):
            self.hits += 1
            return float(hit["ms"])
        self.misses += 1
        return None

    def put(self, key: Mapping[str, Any], ms: float) -> None:
        """Store a timing (in memory; ``save`` writes the file)."""
        self.entries[self.digest(key)] = {"key": json.loads(json.dumps(key)), "ms": float(ms)}

    def save(self) -> None:
        """Write the cache atomically (no-op without a path)."""
        if self.path is not None:
            atomic_write_text(self.path, json.dumps({"version": CACHE_VERSION, "entries": self.entries}) + "\n")


@dataclass
class LayerCurve:
    """Measured latency (ms) of one layer at increasing output ``widths``; ``spec`` is the full-width layer."""

    name: str
    spec: LayerSpec
    widths: tuple[int, ...]
    ms: tuple[float, ...]


@dataclass
class LatencyTable:
    """Per-layer latency curves plus what they were measured on (``meta``)."""

    layers: dict[str, LayerCurve]
    meta: dict[str, Any] = field(default_factory=dict)

    def _curve(self, layer: str) -> LayerCurve:
        if layer not in self.layers:
            raise ConfigError(f"latency table has no layer '{layer}'; valid: {', '.join(list(self.layers)[:10])}")
        return self.layers[layer]

    def cost(self, layer: str, width: float) -> float:
        """Latency (ms) of ``layer`` with ``width`` output channels (linear interpolation, clamped)."""
        c = self._curve(layer)
        return float(np.interp(float(width), np.asarray(c.widths, float), np.asarray(c.ms, float)))

    def input_fraction(self, layer: str, kept: float, total: float) -> float:
        """Share of ``layer``'s cost left when ``kept`` of ``total`` input channels remain (linear: kept / total)."""
        return float(kept) / float(total) if total > 0 else 1.0

    def marginal(self, layer: str, width: float, block: int) -> float:
        """Time (ms) saved by removing one group of ``block`` channels at ``width``: cost(w) - cost(w - block)."""
        if block < 1 or width - block < 1:
            raise ConfigError(f"marginal needs block >= 1 and width - block >= 1; got width {width}, block {block}")
        return self.cost(layer, width) - self.cost(layer, width - block)

    def total(self, widths: Mapping[str, float] | None = None) -> float:
        """Sum of layer costs (ms) at ``widths`` (default: every layer at full width)."""
        widths = widths or {}
        return sum(self.cost(n, widths.get(n, c.spec.out_channels)) for n, c in self.layers.items())

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict (inverse: ``from_json``)."""
        return {"meta": self.meta, "layers": [{"name": c.name, "spec": c.spec.key(), "widths": list(c.widths),
                                               "ms": list(c.ms)} for c in self.layers.values()]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LatencyTable:
        """Rebuild from ``to_json`` output; a malformed dict is a DataError."""
        try:
            layers = {}
            for row in d["layers"]:
                fields: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in row["spec"].items()}
                spec = LayerSpec(**fields)
                layers[row["name"]] = LayerCurve(row["name"], spec, tuple(int(w) for w in row["widths"]),
                                                 tuple(float(v) for v in row["ms"]))
            return cls(layers, dict(d.get("meta", {})))
        except (KeyError, TypeError) as exc:
            raise DataError(f"malformed latency table JSON ({exc!r}); expected keys meta, layers") from None

    def to_csv(self) -> str:
        """CSV text: layer, kind, in_channels, full_width, width, ms (one row per measured point)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["layer", "kind", "in_channels", "full_width", "width", "ms"])
        for c in self.layers.values():
            for width, ms in zip(c.widths, c.ms, strict=True):
                w.writerow([c.name, c.spec.kind, c.spec.in_channels, c.spec.out_channels, width, f"{ms:.6f}"])
        return buf.getvalue()

    def save(self, out_dir: Path, stem: str = "latency_table") -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.csv`` atomically into ``out_dir``; returns both paths."""
        out_dir = Path(out_dir)
        jp, cp = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
        atomic_write_text(jp, json.dumps(self.to_json(), indent=2) + "\n")
        atomic_write_text(cp, self.to_csv())
        return jp, cp


def width_grid(full: int, block: int, max_points: int = 8) -> tuple[int, ...]:
    """Widths to measure: multiples of ``block`` up to ``full`` (and ``full``), at most ``max_points``.

    Evenly sampled; always includes the smallest and the full width.
    """
    if full < 1 or block < 1 or max_points < 2:
        raise ConfigError(f"width grid needs full >= 1, block >= 1, max_points >= 2; got {full}, {block}, {max_points}")
    cands = sorted({*range(block, full + 1, block), full})
    if len(cands) <= max_points:
        return tuple(cands)
    idx = np.unique(np.round(np.linspace(0, len(cands) - 1, max_points)).astype(int))
    return tuple(cands[i] for i in idx)


def table_bench_spec(bench: BenchSpec, batch: int = 1, *, iters: int = 50, warmup: int = 5,
                     repeats: int = 3) -> BenchSpec:
    """The profile's bench settings for per-layer timing: one batch size, shorter loops."""
    return dataclasses.replace(bench, batch_sizes=(int(batch),), iters=iters, warmup=warmup, repeats=repeats)


def _producer_blocks(model: nn.Module, profile: HardwareProfile, example_inputs: Any) -> dict[str, int]:
    """Module name -> channels per group, for every module whose outputs are in a removable group set."""
    from hwprune.groups import build_groups

    gs = build_groups(model, dataclasses.replace(profile, weight_mode="uniform"), example_inputs, "structured")
    blocks: dict[str, int] = {}
    for e in gs.entries:
        if e.removable and e.channels and e.kind in ("channel", "channel_block"):
            for m in e.modules:
                blocks[m] = max(len(c) for c in e.channels)
    return blocks


def build_latency_table(model: nn.Module, profile: HardwareProfile, example_inputs: Any, *,
                        bench: BenchSpec | None = None, batch: int = 1, widths: Sequence[int] | None = None,
                        max_points: int = 8, cache_path: Path | None = None, time_fn: TimeFn | None = None,
                        fingerprint: Mapping[str, Any] | None = None) -> LatencyTable:
    """Time every conv/linear of ``model`` at several output widths (see module docstring).

    Args:
        model: the dense network.
        example_inputs: one (1, C, H, W) batch for recording input shapes.
        profile: gives the group blocks (width grid) and, unless ``bench`` is given, the bench settings.
        bench: timing settings (default ``table_bench_spec(profile.bench, batch)``).
        batch: batch size of every timing.
        widths: explicit widths for every prunable layer (clipped to its full width; full width added).
        max_points: grid size per prunable layer when ``widths`` is None.
        cache_path: JSON cache file (None: no cache).
        time_fn: timing function (default ``ort_time_layer``; tests inject a fake).
        fingerprint: machine fingerprint (default ``machine_fingerprint(bench.provider)``).

    Ten parameters: the model, the example input and the timing options of the CLI, passed through.
    """
    bench = bench or table_bench_spec(profile.bench, batch)
    time_fn = time_fn or ort_time_layer
    fp = dict(fingerprint) if fingerprint is not None else machine_fingerprint(bench.provider)
    cache = LatencyCache(cache_path)
    blocks = _producer_blocks(model, profile, example_inputs)
    layers: dict[str, LayerCurve] = {}
    for name, spec in record_layers(model, example_inputs).items():
        full = spec.out_channels
        if name not in blocks:
            grid: tuple[int, ...] = (full,)
        elif widths is not None:
            grid = tuple(sorted({int(w) for w in widths if 1 <= int(w) <= full} | {full}))
        else:
            grid = width_grid(full, blocks[name], max_points)
        grid = tuple(w for w in grid if spec.depthwise or w % spec.groups == 0)
        ms = []
        for w in grid:
            s = spec.at_width(w)
            key = {"layer": s.key(), "backend": bench.backend, "provider": bench.provider,
                   "precision": bench.precision, "threads": bench.threads, "batch": int(batch), "machine": fp}
            val = cache.get(key)
            if val is None:
                val = float(time_fn(s, bench, int(batch)))
                if not math.isfinite(val) or val < 0:
                    raise DataError(f"timing of layer '{name}' at width {w} returned {val} ms")
                cache.put(key, val)
            ms.append(val)
        layers[name] = LayerCurve(name, spec, grid, tuple(ms))
        if cache.misses:
            cache.save()
    meta = {"backend": bench.backend, "provider": bench.provider, "precision": bench.precision,
            "threads": bench.threads, "batch": int(batch), "machine": fp, "profile": profile.name,
            "cache_hits": cache.hits, "cache_misses": cache.misses}
    return LatencyTable(layers, meta)
