"""Hardware profile schema: frozen, versioned dataclasses and rule matching.

A profile says which pruning granularity each layer gets on one target (device + runtime +
precision), in two phases: ``structured`` (removable channel / block / layer groups) and ``nm``
(N:M sparsity on the compact model). Rules are ordered; the first rule that matches a module wins
within each phase, and ``none`` rules apply to both phases. Pure Python + PyYAML: no torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from hwprune.base.errors import ConfigError
from hwprune.profiles.calibration import CalibrationInfo
from hwprune.profiles.checks import (
    FieldError,
    as_tuple,
    check_bool,
    check_choice,
    check_int,
    check_str,
    describe,
    suggest,
)

__all__ = [
    "SCHEMA_VERSION",
    "PHASES",
    "UnstructuredGranularity",
    "ChannelGranularity",
    "ChannelBlockGranularity",
    "KernelShapeGranularity",
    "LayerGranularity",
    "NMGranularity",
    "NoGranularity",
    "HeadGranularity",
    "MLPBlockGranularity",
    "Granularity",
    "GRANULARITY_TYPES",
    "LayerRule",
    "DeviceSpec",
    "BenchSpec",
    "HardwareProfile",
]

SCHEMA_VERSION = 1
PHASES: tuple[str, ...] = ("structured", "nm")


# ----------------------------------------------------------------------------- granularities
@dataclass(frozen=True)
class UnstructuredGranularity:
    """Element-wise mask (one group per weight element); not removable by surgery."""

    kind: ClassVar[str] = "unstructured"
    phase: ClassVar[str] = "structured"
    removable: ClassVar[bool] = False


@dataclass(frozen=True)
class ChannelGranularity:
    """One output channel (filter + every coupled slice) per group; removable."""

    kind: ClassVar[str] = "channel"
    phase: ClassVar[str] = "structured"
    removable: ClassVar[bool] = True


@dataclass(frozen=True)
class ChannelBlockGranularity:
    """``block`` consecutive output channels per group, so kept widths stay multiples of ``block``."""

    block: int
    kind: ClassVar[str] = "channel_block"
    phase: ClassVar[str] = "structured"
    removable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_int(self, "block", 1)


@dataclass(frozen=True)
class KernelShapeGranularity:
    """One (input channel, kernel row, kernel column) position across all filters per group."""

    kind: ClassVar[str] = "kernel_shape"
    phase: ClassVar[str] = "structured"
    removable: ClassVar[bool] = False


@dataclass(frozen=True)
class LayerGranularity:
    """A whole residual branch per group (blocks following ``hwprune.models.blocks``); removable."""

    kind: ClassVar[str] = "layer"
    phase: ClassVar[str] = "structured"
    removable: ClassVar[bool] = True


@dataclass(frozen=True)
class NMGranularity:
    """At most ``n`` nonzeros in every ``m`` consecutive weights along the reduction dimension."""

    n: int
    m: int
    kind: ClassVar[str] = "nm"
    phase: ClassVar[str] = "nm"
    removable: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_int(self, "n", 1)
        check_int(self, "m", 2)
        if self.n >= self.m:
            raise FieldError("NMGranularity", "n", f"n must be < m (got n={self.n}, m={self.m})")


@dataclass(frozen=True)
class NoGranularity:
    """Keep the module dense; applies to both phases."""

    kind: ClassVar[str] = "none"
    phase: ClassVar[str] = "any"
    removable: ClassVar[bool] = False


@dataclass(frozen=True)
class HeadGranularity:
    """Whole attention heads of a matched attention module; removable.

    One group per head: the head's rows of the query, key and value projections (weights and
    biases) and the matching input columns of the output projection. Matches
    ``nn.MultiheadAttention`` (packed ``in_proj_weight``) and modules with ``num_heads``/``head_dim``
    attributes and q/k/v (or packed ``qkv``) plus output ``Linear`` projections.
    """

    kind: ClassVar[str] = "head"
    phase: ClassVar[str] = "structured"
    removable: ClassVar[bool] = True


@dataclass(frozen=True)
class MLPBlockGranularity:
    """Hidden width of a matched MLP module in ``block`` consecutive channels; removable.

    Applies to every coupled channel set produced and consumed inside the matched module (the
    first Linear's output rows, coupled to the second Linear's input columns); combined with the
    blocks of the layers' own rules by least common multiple.
    """

    block: int
    kind: ClassVar[str] = "mlp_block"
    phase: ClassVar[str] = "structured"
    removable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_int(self, "block", 1)


Granularity = (UnstructuredGranularity | ChannelGranularity | ChannelBlockGranularity | KernelShapeGranularity
               | LayerGranularity | NMGranularity | NoGranularity | HeadGranularity | MLPBlockGranularity)
GRANULARITY_TYPES: dict[str, type] = {cls.kind: cls for cls in (
    UnstructuredGranularity, ChannelGranularity, ChannelBlockGranularity, KernelShapeGranularity,
    LayerGranularity, NMGranularity, NoGranularity, HeadGranularity, MLPBlockGranularity)}


# Granularities whose fallback is restricted further than "same phase or none".
_FALLBACKS: dict[type, tuple[type[Granularity], ...]] = {
    HeadGranularity: (NoGranularity,),
    MLPBlockGranularity: (ChannelGranularity, ChannelBlockGranularity, NoGranularity),
}


def _check_granularity(obj: object, name: str, allow_none: bool = False) -> None:
    value = getattr(obj, name)
    if value is None and allow_none:
        return
    if type(value) not in GRANULARITY_TYPES.values():
        raise FieldError(type(obj).__name__, name, f"expected a granularity, got {describe(value)}")


# ----------------------------------------------------------------------------- rules and specs
@dataclass(frozen=True)
class LayerRule:
    """Map matching modules to a granularity.

    ``match`` is an exact module name, ``"re:<regex>"`` (fullmatch on the module name) or a module
    class name (any name in the module's MRO). ``fallback`` is used where the granularity cannot be
    honoured for a module; ``optional`` allows the rule to match no module of a model.
    """

    match: str
    granularity: Granularity
    fallback: Granularity | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        check_str(self, "match", nonempty=True)
        if self.match.startswith("re:"):
            pattern = self.match[3:]
            if not pattern:
                raise FieldError("LayerRule", "match", "empty regex after 're:'")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise FieldError("LayerRule", "match", f"invalid regex {pattern!r}: {exc}") from None
        _check_granularity(self, "granularity")
        _check_granularity(self, "fallback", allow_none=True)
        check_bool(self, "optional")
        fb = self.fallback
        if fb is not None:
            if isinstance(self.granularity, NoGranularity):
                raise FieldError("LayerRule", "fallback", "a 'none' rule cannot have a fallback")
            if fb == self.granularity:
                raise FieldError("LayerRule", "fallback", "fallback equals the granularity")
            if fb.phase not in (self.granularity.phase, "any"):
                raise FieldError("LayerRule", "fallback", f"fallback kind '{fb.kind}' (phase {fb.phase}) does not "
                                 f"fit granularity '{self.granularity.kind}' (phase {self.granularity.phase}); "
                                 "use a granularity of the same phase or 'none'")
            allowed = _FALLBACKS.get(type(self.granularity))
            if allowed is not None and not isinstance(fb, allowed):
                valid = ", ".join(c.kind for c in allowed)
                raise FieldError("LayerRule", "fallback", f"granularity '{self.granularity.kind}' takes a fallback of "
                                 f"kind {valid}; got '{fb.kind}'")

    def matches(self, name: str, type_names: Sequence[str]) -> bool:
        """True if this rule selects the module ``name`` whose MRO class names are ``type_names``."""
        if self.match.startswith("re:"):
            return re.fullmatch(self.match[3:], name) is not None
        return self.match == name or self.match in type_names


_DEVICE_KINDS = ("cpu", "cuda")
_CC_RE = re.compile(r"\d+\.\d+")
_ISA_RE = re.compile(r"[a-z0-9][a-z0-9_.]*")


@dataclass(frozen=True)
class DeviceSpec:
    """Target device: ``kind`` cpu|cuda, vendor, arch, ISA flags (e.g. avx2, neon), minimum CUDA CC."""

    kind: Literal["cpu", "cuda"]
    vendor: str
    arch: str
    isa: tuple[str, ...] = ()
    min_compute_capability: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        check_choice(self, "kind", _DEVICE_KINDS)
        check_str(self, "vendor", nonempty=True)
        check_str(self, "arch", nonempty=True)
        for flag in as_tuple(self, "isa"):
            if not isinstance(flag, str) or not _ISA_RE.fullmatch(flag):
                raise FieldError("DeviceSpec", "isa", f"ISA flags are lower-case names like avx2, avx512f, neon; "
                                 f"got {describe(flag)}")
        cc = self.min_compute_capability
        if cc is not None:
            if not isinstance(cc, str) or not _CC_RE.fullmatch(cc):
                raise FieldError("DeviceSpec", "min_compute_capability",
                                 f"expected a string 'MAJOR.MINOR' such as '8.0', got {describe(cc)}")
            if self.kind != "cuda":
                raise FieldError("DeviceSpec", "min_compute_capability", "only valid for kind 'cuda'")
        check_str(self, "description")


_BACKENDS = ("onnxruntime", "openvino", "tensorrt")
_PROVIDERS = ("cpu", "cuda")
_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BenchSpec:
    """How to time an exported model: runtime, provider, precision, batch sizes, loop counts."""

    backend: Literal["onnxruntime", "openvino", "tensorrt"] = "onnxruntime"
    provider: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    batch_sizes: tuple[int, ...] = (1, 32)
    warmup: int = 10
    iters: int = 100
    repeats: int = 3
    threads: int = 0  # 0 = runtime default

    def __post_init__(self) -> None:
        check_choice(self, "backend", _BACKENDS)
        check_choice(self, "provider", _PROVIDERS)
        check_choice(self, "precision", _PRECISIONS)
        sizes = as_tuple(self, "batch_sizes")
        if not sizes:
            raise FieldError("BenchSpec", "batch_sizes", "must list at least one batch size")
        for b in sizes:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise FieldError("BenchSpec", "batch_sizes", f"batch sizes must be integers >= 1, got {describe(b)}")
        check_int(self, "warmup", 0)
        check_int(self, "iters", 1)
        check_int(self, "repeats", 1)
        check_int(self, "threads", 0)
        if self.backend == "tensorrt" and self.provider != "cuda":
            raise FieldError("BenchSpec", "provider", "backend 'tensorrt' needs provider 'cuda'")
        if self.backend == "openvino" and self.provider != "cpu":
            raise FieldError("BenchSpec", "provider", "backend 'openvino' runs on provider 'cpu' (its CPU device)")


_WEIGHT_MODES = ("uniform", "size", "flops", "latency")
_SCOPES = ("per_layer", "global")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class HardwareProfile:
    """One deployment target: device, ordered layer rules, group weighting/scope and bench settings."""

    name: str
    schema_version: int
    description: str
    device: DeviceSpec
    rules: tuple[LayerRule, ...]
    weight_mode: Literal["uniform", "size", "flops", "latency"] = "uniform"
    scope: Literal["per_layer", "global"] = "per_layer"
    bench: BenchSpec = field(default_factory=BenchSpec)
    notes: str = ""
    source: str = field(default="<dict>", compare=False)
    calibration: CalibrationInfo | None = None  # set on profiles measured by ``hwprune profile calibrate``

    def __post_init__(self) -> None:
        check_str(self, "name", nonempty=True)
        if not _NAME_RE.fullmatch(self.name):
            raise FieldError("HardwareProfile", "name", f"use letters, digits, '.', '_' or '-' (got {self.name!r})")
        if isinstance(self.schema_version, bool) or self.schema_version != SCHEMA_VERSION:
            raise FieldError("HardwareProfile", "schema_version",
                             f"unsupported schema_version {self.schema_version!r}; this hwprune reads "
                             f"schema_version {SCHEMA_VERSION}")
        check_str(self, "description")
        if not isinstance(self.device, DeviceSpec):
            raise FieldError("HardwareProfile", "device", f"expected a DeviceSpec, got {describe(self.device)}")
        rules = as_tuple(self, "rules")
        if not rules:
            raise FieldError("HardwareProfile", "rules", "must contain at least one rule")
        for rule in rules:
            if not isinstance(rule, LayerRule):
                raise FieldError("HardwareProfile", "rules", f"expected LayerRule items, got {describe(rule)}")
        check_choice(self, "weight_mode", _WEIGHT_MODES)
        check_choice(self, "scope", _SCOPES)
        if not isinstance(self.bench, BenchSpec):
            raise FieldError("HardwareProfile", "bench", f"expected a BenchSpec, got {describe(self.bench)}")
        if self.bench.provider == "cuda" and self.device.kind != "cuda":
            raise FieldError("HardwareProfile", "bench",
                             f"bench provider 'cuda' needs device kind 'cuda' (got '{self.device.kind}')")
        check_str(self, "notes")
        if self.calibration is not None and not isinstance(self.calibration, CalibrationInfo):
            raise FieldError("HardwareProfile", "calibration", f"expected CalibrationInfo, got "
                             f"{describe(self.calibration)}")

    def rules_for_phase(self, phase: str) -> tuple[LayerRule, ...]:
        """Rules that act in ``phase`` ("structured" or "nm"), in order; ``none`` rules are in both."""
        _check_phase(phase)
        return tuple(r for r in self.rules if r.granularity.phase in (phase, "any"))

    @property
    def has_nm(self) -> bool:
        """True if any rule asks for N:M sparsity."""
        return any(isinstance(r.granularity, NMGranularity) for r in self.rules)

    @property
    def alignment(self) -> int:
        """Largest ``channel_block`` block among the rules' granularities (1 if there is none)."""
        blocks = [r.granularity.block for r in self.rules if isinstance(r.granularity, ChannelBlockGranularity)]
        return max(blocks, default=1)

    @property
    def nm_patterns(self) -> tuple[tuple[int, int], ...]:
        """Distinct ``(n, m)`` pairs of the N:M rules, in rule order."""
        pairs = [(r.granularity.n, r.granularity.m) for r in self.rules if isinstance(r.granularity, NMGranularity)]
        return tuple(dict.fromkeys(pairs))


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ConfigError(f"unknown phase {phase!r}{suggest(str(phase), PHASES)}; valid: {', '.join(PHASES)}")
