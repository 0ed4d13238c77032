"""The resolved configuration of every step of a run: ``RUN_DIR/config.yaml`` (run format 1).

``config.yaml``::

    run_format: 1            # RUN_FORMAT; a directory without it was written by an older hwprune
    profile: x86-avx2-ort    # the resolved profile's name (profile.yaml holds the profile itself)
    train: {...}             # TrainJobConfig.to_dict(), profile resolved ('auto' -> its name)
    pipeline: {...}          # PipelineOptions.to_dict(): the N:M phase and the timing settings

The train job writes it; a later step run with other options (``hwprune nm RUN_DIR --epochs 3``)
records them in its section, so the file always says what produced the run's artifacts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hwprune.base.errors import ConfigError, DataError
from hwprune.training.config import TrainJobConfig

__all__ = ["RUN_FORMAT", "PipelineOptions", "RunConfig"]

RUN_FORMAT = 1  # version of the run-directory layout (RunDir); bump when an artifact changes meaning
# train keys added after run format 1 was fixed, with the value that reproduces a run recorded without them
LEGACY_TRAIN_DEFAULTS: dict[str, Any] = {"block_order": "index"}


@dataclass(frozen=True)
class PipelineOptions:
    """Options of the steps after training (recorded in ``config.yaml`` under ``pipeline``).

    Attributes:
        nm_epochs: epochs of the N:M prox phase and of its masked fine-tune (profiles with nm rules).
        nm_lam: lambda of the batched SEF prox in the N:M phase.
        nm_lr: learning rate of the N:M prox phase; None: half the job's ``lr`` (the compact model
            is already trained, so the phase starts gentler than the sparse phase did).
        nm_finetune_lr: learning rate of the N:M fine-tune; None: half of the N:M phase's lr.
        nm_eps: half-space threshold of the N:M phase, in [0, 1).
        nm_hs_frac: fraction of the N:M phase before its half-space step starts, in [0, 1].
        bench_batch_sizes: override the profile's batch sizes.
        bench_iters / bench_warmup / bench_repeats: override the profile's timing settings.
        bench_fallback: time on ONNX Runtime CPU when the profile's backend is not installed here.
    """

    nm_epochs: int = 2
    nm_lam: float = 0.05
    nm_lr: float | None = None
    nm_finetune_lr: float | None = None
    nm_eps: float = 0.05
    nm_hs_frac: float = 0.3
    bench_batch_sizes: tuple[int, ...] | None = None
    bench_iters: int | None = None
    bench_warmup: int | None = None
    bench_repeats: int | None = None
    bench_fallback: bool = True

    def __post_init__(self) -> None:
        if self.nm_epochs < 0:
            raise ConfigError(f"nm_epochs must be >= 0, got {self.nm_epochs}")
        for name in ("nm_lam", "nm_lr", "nm_finetune_lr"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{name} must be >= 0, got {v}")
        if not 0.0 <= self.nm_eps < 1.0:
            raise ConfigError(f"nm_eps must be in [0, 1), got {self.nm_eps}")
        if not 0.0 <= self.nm_hs_frac <= 1.0:
            raise ConfigError(f"nm_hs_frac must be in [0, 1], got {self.nm_hs_frac}")
        for name in ("bench_iters", "bench_repeats"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1, got {v}")
        if self.bench_warmup is not None and self.bench_warmup < 0:
            raise ConfigError(f"bench_warmup must be >= 0, got {self.bench_warmup}")
        if self.bench_batch_sizes is not None and (not self.bench_batch_sizes or min(self.bench_batch_sizes) < 1):
            raise ConfigError(f"bench_batch_sizes must be positive integers, got {self.bench_batch_sizes}")

    def nm_learning_rates(self, job_lr: float) -> tuple[float, float]:
        """(prox phase lr, fine-tune lr) of the N:M phase for a job trained with ``job_lr``."""
        lr = self.nm_lr if self.nm_lr is not None else job_lr / 2
        return lr, self.nm_finetune_lr if self.nm_finetune_lr is not None else lr / 2

    def bench_overrides(self) -> dict[str, Any]:
        """The ``BenchSpec`` fields these options replace (only the ones that are set)."""
        out: dict[str, Any] = {}
        if self.bench_batch_sizes:
            out["batch_sizes"] = tuple(self.bench_batch_sizes)
        for name in ("iters", "warmup", "repeats"):
            v = getattr(self, f"bench_{name}")
            if v is not None:
                out[name] = v
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-serialisable; tuples as lists)."""
        d = dataclasses.asdict(self)
        if d["bench_batch_sizes"] is not None:
            d["bench_batch_sizes"] = list(d["bench_batch_sizes"])
        return d

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], source: str = "<config>") -> PipelineOptions:
        """Inverse of :meth:`to_dict`; unknown keys are a ConfigError naming ``source``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown pipeline option(s) {unknown}; valid: {', '.join(sorted(names))}")
        kwargs = dict(d)
        if kwargs.get("bench_batch_sizes") is not None:
            kwargs["bench_batch_sizes"] = tuple(int(b) for b in kwargs["bench_batch_sizes"])
        try:
            return cls(**kwargs)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{source}: {exc}") from None


@dataclass(frozen=True)
class RunConfig:
    """Everything a run was produced with: the job, the resolved profile name, the later steps' options."""

    train: TrainJobConfig
    profile: str
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    run_format: int = RUN_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """The ``config.yaml`` mapping."""
        return {"run_format": self.run_format, "profile": self.profile, "train": self.train.to_dict(),
                "pipeline": self.pipeline.to_dict()}

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], source: str = "run configuration") -> RunConfig:
        """Parse ``config.yaml``; another run format is one ``DataError`` line naming the file.

        Raises:
            DataError: no ``run_format`` (an older hwprune wrote it) or a different one; a train section
                missing keys the job always writes (a truncated file).
            ConfigError: a malformed section (unknown key, wrong type), naming the key.
        """
        fmt = d.get("run_format")
        if fmt != RUN_FORMAT:
            what = "has no run_format (written by an hwprune older than the RunDir)" if fmt is None \
                else f"has run_format {fmt!r}"
            raise DataError(f"{source} {what}; this hwprune reads run format {RUN_FORMAT}: re-run 'hwprune train' "
                            "or 'hwprune run' into a new directory")
        train, pipeline = d.get("train"), d.get("pipeline") or {}
        if not isinstance(train, Mapping) or not isinstance(pipeline, Mapping):
            raise ConfigError(f"{source}: 'train' and 'pipeline' must be mappings")
        unknown = sorted(set(d) - {"run_format", "profile", "train", "pipeline"})
        if unknown:
            raise ConfigError(f"{source}: unknown top-level key(s) {unknown}; valid: run_format, profile, train, "
                              "pipeline")
        job = TrainJobConfig.from_mapping({**LEGACY_TRAIN_DEFAULTS, **train}, source=f"{source}: train")
        missing = [f.name for f in dataclasses.fields(TrainJobConfig) if f.name not in train
                   and f.name not in LEGACY_TRAIN_DEFAULTS]
        if missing:  # the job writes every key: a gap is a cut or hand-edited file
            raise DataError(f"{source}: the train section lacks {', '.join(missing[:4])}"
                            f"{' ...' if len(missing) > 4 else ''} (truncated or not written by hwprune); "
                            "re-run 'hwprune train' or 'hwprune run' into a new directory")
        return cls(train=job,
                   profile=str(d.get("profile") or train.get("profile") or ""),
                   pipeline=PipelineOptions.from_mapping(pipeline, source=f"{source}: pipeline"))
