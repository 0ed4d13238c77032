"""``RunDir``: the one owner of a run directory's files (names, readers, atomic writers).

Every step (``hwprune.pipeline.steps``), the report and the deployment bundle read and write a
run only through a ``RunDir``; artifact names exist only here. Layout (run format 1)::

    config.yaml           RunConfig: train job + resolved profile name + later steps' options
    profile.yaml          the resolved profile (read once per RunDir)
    example_input.safetensors   EXAMPLE_N training images (N, C, H, W): the one example input
    train_log.jsonl       one record per epoch and phase (val_acc/val_loss on the validation split)
    groups.json           GroupSet.to_json() of the trained model (checked before a later surgery)
    metrics.json          TrainMetrics          prune_summary.json   SurgerySummary
    surgery_plan.json     SurgeryPlan dict      nm_summary.json      NMSummary
    dense.export.json, model.export.json   ExportRecord of dense.onnx / model.onnx    bench.json  BenchRecord
    <stage>.json + .safetensors   a model (hwprune.surgery.modelio); stages, most processed first:
        nm (N:M-masked compact), pruned (compact), sparse (masked, exact-k zeros), dense
    dense.onnx  model.onnx  report.json  report.md  plots/*.png  checkpoints/<phase>/last.pt
    latency_budget.json   (written by hwprune.pipeline.budget)

Writes happen on the main process only (``torchrun``); a directory of another run format fails
with one line (``RunConfig.from_mapping``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.base.errors import ConfigError, DataError
from hwprune.base.files import atomic_path, atomic_write_json, atomic_write_text, read_json, read_safetensors, read_yaml
from hwprune.base.optional import add_import_path
from hwprune.base.outpath import check_out_dir
from hwprune.data import DatasetBundle, load_dataset
from hwprune.groups.groupset import GroupSet
from hwprune.profiles import HardwareProfile, load_profile, profile_to_dict
from hwprune.surgery import modelio
from hwprune.training.artifacts import BenchRecord, ExportRecord, NMSummary, SurgerySummary, TrainMetrics
from hwprune.training.config import TrainJobConfig
from hwprune.training.distributed import is_main_process
from hwprune.training.runconfig import PipelineOptions, RunConfig

__all__ = ["RunDir", "load_job_data", "EXAMPLE_N", "STAGES"]

EXAMPLE_N = 8  # images in example_input.safetensors (the equivalence checks' real inputs)
STAGES: tuple[str, ...] = ("nm", "pruned", "sparse", "dense")  # saved model stages, most processed first
_CONFIG, _PROFILE, _EXAMPLE, _LOG = "config.yaml", "profile.yaml", "example_input.safetensors", "train_log.jsonl"
_GROUPS, _METRICS, _PLAN, _SURGERY = "groups.json", "metrics.json", "surgery_plan.json", "prune_summary.json"
_NM, _BENCH, _BUDGET = "nm_summary.json", "bench.json", "latency_budget.json"
_REPORT_JSON, _REPORT_MD, _PLOTS, _CHECKPOINTS = "report.json", "report.md", "plots", "checkpoints"
_ONNX = {"dense": "dense.onnx", "final": "model.onnx"}
_EXPORTS = tuple(ExportRecord.path_for(n).name for n in _ONNX.values())
# Outputs of the steps after the dense phase: a fresh (not resumed) train job removes them first.
_DOWNSTREAM = (_LOG, _GROUPS, _METRICS, _PLAN, _SURGERY, _NM, *_EXPORTS, _BENCH, _REPORT_JSON, _REPORT_MD,
               *_ONNX.values())


def load_job_data(cfg: TrainJobConfig) -> DatasetBundle:
    """The job's ``DatasetBundle``: splits drawn with ``cfg.data_seed``, ``cfg.val_fraction`` held out."""
    return load_dataset(cfg.data, data_dir=Path(cfg.data_dir) if cfg.data_dir else None, image_size=cfg.image_size,
                        train_limit=cfg.train_limit, seed=cfg.data_seed, val_fraction=cfg.val_fraction)


class RunDir:
    """A run directory (see the module docstring for its files).

    Args:
        root: the directory. Use :meth:`create` to start a run, :meth:`open` to read an existing one.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._config: RunConfig | None = None
        self._profile: HardwareProfile | None = None
        self._data: DatasetBundle | None = None
        self._example: torch.Tensor | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, root: Path | str, config: RunConfig, profile: HardwareProfile, *, fresh: bool) -> RunDir:
        """Start (``fresh``) or resume a run: writes ``config.yaml`` and ``profile.yaml``.

        A fresh start removes the artifacts of any earlier run in ``root`` downstream of the dense
        model (so no step mistakes them for this run's); ``dense.*`` stays (``checkpoint`` may name it).
        """
        rd = cls(root)
        rd.root.mkdir(parents=True, exist_ok=True)
        if is_main_process():
            if fresh:
                rd._clear(_DOWNSTREAM)
                rd.clear_models(("sparse", "pruned", "nm"))
            atomic_write_text(rd.root / _PROFILE, _yaml(profile_to_dict(profile)))
        rd._profile = profile
        rd.write_config(config)
        return rd

    @staticmethod
    def check_target(root: Path | str, *, resume: bool = False, force: bool = False, option: str = "--out") -> None:
        """Refuse, before any work, to start a run over a finished or interrupted one, or a foreign directory.

        ``root`` must be creatable and writable (``check_out_dir``); ``resume`` continues the recorded
        run, ``force`` starts over. Raises ConfigError naming the option that would allow it.
        """
        root = check_out_dir(root, option=option)
        if resume or force or not root.is_dir():
            return
        finished = (root / _METRICS).exists() or (root / _REPORT_JSON).exists()
        what = ("holds a finished run; pass --force to overwrite it, --resume to repeat its remaining steps, or "
                "choose another directory") if finished else ("holds an interrupted run; pass --resume to continue "
                "it or --force to start over") if (root / _CONFIG).exists() else \
            "exists and is not empty (not an hwprune run); choose a new directory or pass --force"
        if finished or any(root.iterdir()):
            raise ConfigError(f"{option} {root}: {what}")

    @classmethod
    def open(cls, root: Path | str) -> RunDir:
        """An existing run directory; reads and checks ``config.yaml`` (run format) now.

        Raises:
            DataError: not a directory, no ``config.yaml``, or another run format (one line each).
        """
        rd = cls(root)
        if not rd.root.is_dir():
            raise DataError(f"{rd.root}: not a run directory (does not exist)")
        rd.config  # noqa: B018 - read and validate now, so a bad directory fails before any work
        return rd

    # ------------------------------------------------------------------ configuration
    @property
    def config(self) -> RunConfig:
        """The run's resolved configuration (``config.yaml``; read once)."""
        if self._config is None:
            path = self.root / _CONFIG
            if not path.exists():
                raise DataError(f"{path}: missing (a run directory written by 'hwprune train' or 'hwprune run')")
            data = read_yaml(path, what="run configuration", error=DataError,
                             hint="a run directory written by 'hwprune train' or 'hwprune run'") or {}
            if not isinstance(data, dict):
                raise DataError(f"{path}: expected a mapping, got {type(data).__name__}")
            self._config = RunConfig.from_mapping(data, source=str(path))
            add_import_path(self._config.train.model_path)  # a package.module:callable model imports from there
        return self._config

    @property
    def train_config(self) -> TrainJobConfig:
        """The train job's configuration (``config.train``)."""
        return self.config.train

    def write_config(self, config: RunConfig) -> None:
        """Replace ``config.yaml`` (atomically)."""
        self._config = config
        if is_main_process():
            atomic_write_text(self.root / _CONFIG, _yaml(config.to_dict()))

    def record_pipeline(self, opts: PipelineOptions) -> None:
        """Record the options a later step ran with (``config.yaml``'s ``pipeline`` section)."""
        if opts != self.config.pipeline:
            from dataclasses import replace

            self.write_config(replace(self.config, pipeline=opts))

    @property
    def profile(self) -> HardwareProfile:
        """The resolved profile the run was trained with (``profile.yaml``; read once)."""
        if self._profile is None:
            path = self.root / _PROFILE
            if not path.is_file():
                raise DataError(f"{path}: missing (run 'hwprune train' or 'hwprune run' first)")
            self._profile = load_profile(path)
        return self._profile

    # ------------------------------------------------------------------ data and example input
    def data(self) -> DatasetBundle:
        """The job's dataset (loaded once per RunDir; the same splits for every step)."""
        if self._data is None:
            self._data = load_job_data(self.train_config)
        return self._data

    def use_data(self, bundle: DatasetBundle) -> None:
        """Hand an already loaded dataset of this job to the RunDir (the train job loads it first)."""
        self._data = bundle

    def write_example(self, images: torch.Tensor) -> None:
        """Store the example input: ``(N, C, H, W)`` float32 images (the first EXAMPLE_N are kept)."""
        from safetensors.torch import save_file

        self._example = images[:EXAMPLE_N].detach().to(torch.float32).contiguous().cpu()
        if is_main_process():
            with atomic_path(self.root / _EXAMPLE, suffix=".safetensors.tmp") as tmp:
                save_file({"x": self._example}, str(tmp))

    def has_example(self) -> bool:
        """True when ``example_input.safetensors`` exists (as anything: the reader judges it)."""
        return (self.root / _EXAMPLE).exists()

    def example_batch(self) -> torch.Tensor:
        """The stored example images, ``(N, C, H, W)`` float32 (N <= EXAMPLE_N)."""
        if self._example is None:
            path = self.root / _EXAMPLE
            tensors = read_safetensors(path, what="example input", hint="re-run 'hwprune train' into this directory")
            if not isinstance(tensors.get("x"), torch.Tensor) or tensors["x"].ndim != 4:
                raise DataError(f"{path}: expected an (N, C, H, W) tensor 'x'; re-run 'hwprune train'")
            self._example = tensors["x"]
        return self._example

    def example_input(self) -> torch.Tensor:
        """One example input ``(1, C, H, W)``: what tracing, export and surgery are given."""
        return self.example_batch()[:1]

    # ------------------------------------------------------------------ models
    def model_stem(self, stage: str) -> Path:
        """Path (without suffix) of a saved model stage."""
        return self.root / stage

    def has_model(self, stage: str) -> bool:
        """True if ``<stage>.json`` exists."""
        return self.model_stem(stage).with_suffix(".json").exists()

    def save_model(self, model: nn.Module, stage: str, *, plan: dict[str, Any] | None = None,
                   extra: dict[str, Any] | None = None) -> None:
        """Write ``<stage>.json`` + ``<stage>.safetensors`` (main process only)."""
        if is_main_process():
            modelio.save_model(model, self.model_stem(stage), input_shape=tuple(self.example_input().shape[1:]),
                               plan=plan, extra={"stage": stage, **(extra or {})})

    def load_model(self, stage: str) -> tuple[nn.Module, dict[str, Any]]:
        """``(model in eval mode, metadata)`` of a saved stage."""
        return modelio.load_model(self.model_stem(stage))

    def final_stage(self) -> str:
        """The most processed saved stage (nm > pruned > sparse > dense)."""
        for stage in STAGES:
            if self.has_model(stage):
                return stage
        raise DataError(f"{self.root}: no saved model found (expected one of "
                        f"{', '.join(s + '.json' for s in STAGES)}); run 'hwprune train' or 'hwprune run' first")

    def clear_models(self, stages: Iterable[str]) -> None:
        """Remove the given stages' files (stale results of an earlier run)."""
        for stage in stages:
            for suffix in (".json", ".safetensors"):
                self.model_stem(stage).with_suffix(suffix).unlink(missing_ok=True)

    def clear_nm(self) -> None:
        """Remove the N:M phase's outputs (a run whose profile has no nm rule)."""
        self.clear_models(("nm",))
        self._clear((_NM,))

    # ------------------------------------------------------------------ paths of files written by others
    @property
    def log_path(self) -> Path:
        """``train_log.jsonl``."""
        return self.root / _LOG

    @property
    def checkpoints_root(self) -> Path:
        """``checkpoints/``: one ``<phase>/last.pt`` per training phase."""
        return self.root / _CHECKPOINTS

    def onnx_path(self, which: str) -> Path:
        """``dense.onnx`` (``which="dense"``) or ``model.onnx`` (``"final"``)."""
        return self.root / _ONNX[which]

    @property
    def plots_dir(self) -> Path:
        """``plots/``."""
        return self.root / _PLOTS

    @property
    def report_paths(self) -> tuple[Path, Path]:
        """``(report.json, report.md)``."""
        return self.root / _REPORT_JSON, self.root / _REPORT_MD

    # ------------------------------------------------------------------ JSON artifacts
    def write_metrics(self, metrics: TrainMetrics) -> None:
        """``metrics.json``."""
        self._write_json(_METRICS, metrics.to_dict())

    def has_metrics(self) -> bool:
        """True when ``metrics.json`` exists (as anything: a directory there is the reader's error)."""
        return (self.root / _METRICS).exists()

    def metrics(self) -> TrainMetrics:
        """``metrics.json`` (required)."""
        return TrainMetrics.from_dict(self._read(_METRICS, "train metrics", "run 'hwprune train' first"),
                                      what=str(self.root / _METRICS))

    def write_groups(self, groupset: GroupSet) -> None:
        """``groups.json``: the GroupSet description of the trained model."""
        self._write_json(_GROUPS, groupset.to_json())

    def has_groups(self) -> bool:
        """True when ``groups.json`` exists."""
        return (self.root / _GROUPS).exists()

    def groups_description(self) -> dict[str, Any]:
        """``groups.json`` (required)."""
        out: dict[str, Any] = self._read(_GROUPS, "group description", "run 'hwprune train' first")
        return out

    def check_groups(self, groupset: GroupSet) -> None:
        """Raise ``DataError`` if ``groupset`` differs from the trained model's ``groups.json``.

        Compares what a surgery depends on: group and scope counts, scope names, grouped parameters.
        """
        ref = self.groups_description()
        got = groupset.to_json()
        keys = ("num_groups", "num_scopes", "param_names")
        diff = [k for k in keys if ref.get(k) != got.get(k)]
        if [r.get("scope") for r in ref.get("groups", [])] != [g.get("scope") for g in got["groups"]]:
            diff.append("scopes")
        if diff:
            raise DataError(f"{self.root / _GROUPS}: the groups rebuilt from profile.yaml differ from the trained "
                            f"ones in {', '.join(diff)} (was the profile or the model changed?)")

    def write_surgery(self, plan: dict[str, Any], summary: SurgerySummary) -> None:
        """``surgery_plan.json`` + ``prune_summary.json``."""
        self._write_json(_PLAN, plan)
        self._write_json(_SURGERY, summary.to_dict())

    def has_surgery_plan(self) -> bool:
        """True when ``surgery_plan.json`` exists."""
        return (self.root / _PLAN).exists()

    def has_surgery(self) -> bool:
        """True when surgery ran (plan, summary and the compact model exist)."""
        return all((self.root / n).exists() for n in (_PLAN, _SURGERY)) and self.has_model("pruned")

    def surgery(self) -> SurgerySummary:
        """``prune_summary.json`` (required)."""
        return SurgerySummary.from_dict(self._read(_SURGERY, "surgery summary", "run 'hwprune prune RUN_DIR' first"),
                                        what=str(self.root / _SURGERY))

    def surgery_plan(self) -> dict[str, Any]:
        """``surgery_plan.json`` (required; a ``SurgeryPlan.to_dict()``)."""
        out: dict[str, Any] = self._read(_PLAN, "surgery plan", "run 'hwprune prune RUN_DIR' first")
        return out

    def write_nm(self, summary: NMSummary) -> None:
        """``nm_summary.json``."""
        self._write_json(_NM, summary.to_dict())

    def nm(self) -> NMSummary | None:
        """``nm_summary.json``, or None when the run has no N:M phase."""
        path = self.root / _NM
        return NMSummary.from_dict(self._read(_NM, "N:M summary"), what=str(path)) if path.exists() else None

    def onnx_path_of(self, stage: str) -> Path:
        """Where a stage is exported: ``dense.onnx``, ``model.onnx`` (the final stage), else ``<stage>.onnx``."""
        if stage == "dense":
            return self.onnx_path("dense")
        return self.onnx_path("final") if stage == self.final_stage() else self.root / f"{stage}.onnx"

    def write_export(self, onnx_path: Path, record: ExportRecord) -> None:
        """The export record of ``onnx_path`` (``<name>.export.json`` beside it)."""
        if is_main_process():
            atomic_write_json(ExportRecord.path_for(onnx_path), record.to_dict())

    def export(self, which: str = "final") -> ExportRecord:
        """The export record of ``model.onnx`` (``which="final"``) or ``dense.onnx`` (``"dense"``); required."""
        path = ExportRecord.path_for(self.onnx_path(which))
        d = read_json(path, what="export record", hint=f"run 'hwprune export {self.root}' first")
        return ExportRecord.from_dict(d, what=str(path))

    def write_bench(self, record: BenchRecord) -> None:
        """``bench.json``."""
        self._write_json(_BENCH, record.to_dict())

    def bench(self) -> BenchRecord | None:
        """``bench.json``, or None before the timing step."""
        path = self.root / _BENCH
        return BenchRecord.from_dict(self._read(_BENCH, "timing result"), what=str(path)) if path.exists() else None

    def latency_budget(self) -> dict[str, Any] | None:
        """``latency_budget.json`` (``hwprune.pipeline.budget``), or None."""
        return self._read(_BUDGET, "latency budget") if (self.root / _BUDGET).exists() else None

    def report(self) -> dict[str, Any] | None:
        """``report.json``, or None before the report step."""
        return self._read(_REPORT_JSON, "report") if (self.root / _REPORT_JSON).exists() else None

    # ------------------------------------------------------------------ helpers
    def _read(self, name: str, what: str, hint: str = "") -> Any:
        return read_json(self.root / name, what=what, hint=hint)

    def _write_json(self, name: str, obj: Any) -> None:
        if is_main_process():
            atomic_write_json(self.root / name, obj)

    def _clear(self, names: Iterable[str]) -> None:
        for name in names:
            (self.root / name).unlink(missing_ok=True)


def _yaml(d: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(d, sort_keys=False))
