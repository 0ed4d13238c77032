"""Measure this machine's width staircase per layer kind and turn it into a hardware profile.

``calibrate(settings)`` exports small probe networks, one per (layer kind, width), and times all of
them in ONE fresh worker process (``hwprune.runtime.bench.measure_many``: one session / compiled model per
probe, re-timed in every round, rounds interleaved, the order shuffled per round so drift cannot fake
a trend). Each probe is the
pruned width ``w`` as a real network sees it, as a layer's outputs AND the next layer's inputs:

* ``conv``: Conv3x3(64 -> w) -> ReLU -> Conv3x3(w -> 64) on 16x16 maps;
* ``depthwise``: Conv1x1(32 -> w) -> ReLU -> depthwise Conv3x3(w) -> ReLU -> Conv1x1(w -> 32) on 16x16;
* ``linear``: Linear(256 -> w) -> ReLU -> Linear(w -> 256);
* ``attention_mlp``: a transformer MLP on 64 tokens of 128 features: Linear(128 -> w) -> GELU -> Linear(w -> 128).

Widths are every integer from ``min_width`` to ``min_width + 3 * max_block``. The per-round medians
go to ``hwprune.runtime.staircase.find_staircase``. ``calibrated_profile`` writes the blocks into
``channel_block`` rules (``Conv2d``: the larger of the conv and depthwise blocks, since a depthwise
conv's channels are grouped with the 1x1 conv that produces them; ``Linear``: the larger of linear
and attention_mlp), the ``attention_mlp`` block into the transformer-MLP ``mlp_block`` rule (after the
bundled profiles' whole-head rules) and the whole measurement into the profile's ``calibration`` block. An ambiguous
kind keeps ``fallback_block`` (the best bundled profile's alignment for this machine) and is listed.
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.profiles import BenchSpec, HardwareProfile
from hwprune.profiles.calibration import LAYER_KINDS, CalibrationInfo
from hwprune.profiles.machine import MachineFacts
from hwprune.profiles.schema import (
    ChannelBlockGranularity,
    ChannelGranularity,
    DeviceSpec,
    HeadGranularity,
    LayerRule,
    MLPBlockGranularity,
)
from hwprune.runtime.staircase import CANDIDATES, Staircase, find_staircase

__all__ = ["CalibrationSettings", "KindCurve", "CalibrationResult", "probe_model", "calibrate",
           "calibrated_profile", "curves_csv"]

_PROBE_SEED = 0


@dataclass(frozen=True)
class CalibrationSettings:
    """What to measure: runtime (backend/provider/precision/threads), batch, kinds, width range, loops."""

    backend: str = "onnxruntime"
    provider: str = "cpu"
    precision: str = "fp32"
    threads: int = 1
    batch: int = 1
    kinds: tuple[str, ...] = LAYER_KINDS
    min_width: int = 32
    max_block: int = 32
    warmup: int = 3
    iters: int = 20
    repeats: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in LAYER_KINDS]
        if bad or not self.kinds:
            raise ConfigError(f"unknown layer kind(s) {bad}; valid: {', '.join(LAYER_KINDS)}")
        if self.min_width < 1 or self.max_block < 1 or self.batch < 1 or self.threads < 0:
            raise ConfigError("calibration needs min_width >= 1, max_block >= 1, batch >= 1, threads >= 0")
        if self.repeats < 2:
            raise ConfigError(f"calibration needs >= 2 rounds (--repeats) to measure the spread, got {self.repeats}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Every integer width of the sweep."""
        return tuple(range(self.min_width, self.min_width + 3 * self.max_block + 1))

    def bench_spec(self) -> BenchSpec:
        """The timing settings of the sweep."""
        return BenchSpec(backend=self.backend, provider=self.provider, precision=self.precision,  # type: ignore[arg-type]
                         batch_sizes=(self.batch,), warmup=self.warmup, iters=self.iters, repeats=self.repeats,
                         threads=self.threads)


@dataclass
class KindCurve:
    """One kind's sweep: ``widths`` (W,), ``rounds_ms`` (R, W) per-round medians, and its staircase."""

    kind: str
    widths: tuple[int, ...]
    rounds_ms: np.ndarray
    staircase: Staircase

    @property
    def median_ms(self) -> np.ndarray:
        """(W,) median over rounds."""
        return np.asarray(np.median(self.rounds_ms, axis=0), dtype=np.float64)


@dataclass
class CalibrationResult:
    """All curves, the settings, the machine and library versions, and the wall time of the measurement."""

    settings: CalibrationSettings
    curves: dict[str, KindCurve]
    machine: MachineFacts
    versions: dict[str, str]
    seconds: float
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def blocks(self) -> dict[str, int]:
        """Kind -> measured block."""
        return {k: c.staircase.block for k, c in self.curves.items()}

    def ambiguous(self) -> list[str]:
        """Kinds whose block the measurement left ambiguous."""
        return [k for k, c in self.curves.items() if c.staircase.ambiguous]


def probe_model(kind: str, width: int) -> tuple[nn.Module, tuple[int, ...]]:
    """The probe network of ``kind`` at ``width`` (seeded, eval mode) and its per-sample input shape."""
    torch.manual_seed(_PROBE_SEED)
    w = int(width)
    if kind == "conv":
        mod: nn.Module = nn.Sequential(nn.Conv2d(64, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 64, 3, padding=1))
        shape: tuple[int, ...] = (64, 16, 16)
    elif kind == "depthwise":
        mod = nn.Sequential(nn.Conv2d(32, w, 1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1, groups=w), nn.ReLU(),
                            nn.Conv2d(w, 32, 1))
        shape = (32, 16, 16)
    elif kind == "linear":
        mod = nn.Sequential(nn.Linear(256, w), nn.ReLU(), nn.Linear(w, 256))
        shape = (256,)
    elif kind == "attention_mlp":
        mod = nn.Sequential(nn.Linear(128, w), nn.GELU(), nn.Linear(w, 128))
        shape = (64, 128)
    else:
        raise ConfigError(f"unknown layer kind '{kind}'; valid: {', '.join(LAYER_KINDS)}")
    return mod.eval(), shape


Runner = Callable[[dict[str, Any]], list[list[dict[str, Any]]]]


def _versions(backend: str) -> dict[str, str]:
    from hwprune.runtime.envinfo import collect_env

    vers = collect_env(include_gpu=False)["versions"]
    keep = ("hwprune", "torch", "onnx", "onnxruntime", backend)
    return {k: str(vers[k]) for k in keep if vers.get(k)}


def calibrate(settings: CalibrationSettings, *, facts: MachineFacts | None = None, runner: Runner | None = None,
              work_dir: Path | None = None, probe_dir: Path | None = None,
              timeout_s: float = 1800.0) -> CalibrationResult:
    """Export the probes, time them all in one fresh worker, find each kind's staircase.

    Args:
        settings: what to measure.
        facts: this machine (default ``detect_machine()``).
        runner: execute the timing request in another way (tests); default a fresh subprocess.
        work_dir: where the temporary ONNX files go (default the system temporary directory).
        probe_dir: keep the probe ONNX files here and re-use those that exist (default: a temporary directory).
        timeout_s: wall-clock limit of the timing worker, seconds.
    """
    from hwprune.profiles.machine import detect_machine
    from hwprune.runtime.availability import require_backend
    from hwprune.runtime.bench import measure_many
    from hwprune.runtime.export import ExportConfig, to_onnx

    t0 = time.perf_counter()
    if runner is None:
        require_backend(settings.backend, settings.provider, need_gpu_check=settings.backend == "tensorrt")
    facts = facts or detect_machine()
    widths = settings.widths
    keys = [(k, w) for k in settings.kinds for w in widths]
    cfg = ExportConfig(output_names=("output",))
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="hwprune-calib-") as tmp:
        root = Path(probe_dir) if probe_dir is not None else Path(tmp)
        paths = []
        for kind, w in keys:
            path = root / f"{kind}-{w}.onnx"
            if probe_dir is None or not path.is_file():
                mod, shape = probe_model(kind, w)
                to_onnx(mod, torch.zeros(1, *shape), path, cfg)
            paths.append(path)
        stats = measure_many(paths, settings.bench_spec(), batch_size=settings.batch,
                             shuffle_seed=settings.seed, fresh_sessions=False, timeout_s=timeout_s, runner=runner)
    rounds = np.array([s[0].extra["round_medians_ms"] for s in stats], dtype=np.float64).T  # (R, K*W)
    curves = {}
    for j, kind in enumerate(settings.kinds):
        part = rounds[:, j * len(widths):(j + 1) * len(widths)]
        cands = [b for b in CANDIDATES if b <= settings.max_block]
        curves[kind] = KindCurve(kind, widths, part, find_staircase(widths, part, candidates=cands))
    return CalibrationResult(settings, curves, facts, _versions(settings.backend), time.perf_counter() - t0)


# The bundled CPU profiles' transformer rules (hardware_profiles/x86-avx2-ort.yaml): whole heads of
# nn.MultiheadAttention and of q/k/v attention modules, MLP hidden width in the measured block.
HEAD_MATCHES = ("MultiheadAttention", "re:(.*\\.)?(attn|attention|self_attn|self_attention)")
MLP_MATCH = "re:(.*\\.)?(mlp|ffn|feed_forward)"


def _combined(blocks: dict[str, int], kinds: Sequence[str], fallback: int, ambiguous: Sequence[str]) -> int | None:
    vals = [fallback if k in ambiguous else blocks[k] for k in kinds if k in blocks]
    return max(vals) if vals else None


def calibrated_profile(result: CalibrationResult, *, name: str | None = None, fallback_block: int = 8,
                       curves_file: str = "") -> HardwareProfile:
    """A validated profile whose channel-block rules come from ``result`` (see the module docstring)."""
    s, facts = result.settings, result.machine
    blocks, amb = result.blocks(), result.ambiguous()
    name = name or f"calibrated-{s.backend}-t{s.threads}-b{s.batch}"
    rules = [LayerRule(match, HeadGranularity(), optional=True) for match in HEAD_MATCHES]
    mlp = _combined(blocks, ("attention_mlp",), fallback_block, amb)
    if mlp is not None and mlp > 1:
        rules.append(LayerRule(MLP_MATCH, MLPBlockGranularity(mlp), fallback=ChannelGranularity(), optional=True))
    for match, kinds in (("Conv2d", ("conv", "depthwise")), ("Linear", ("linear", "attention_mlp"))):
        block = _combined(blocks, kinds, fallback_block, amb)
        if block is not None:
            gran = ChannelBlockGranularity(block) if block > 1 else ChannelGranularity()
            rules.append(LayerRule(match, gran, fallback=ChannelGranularity() if block > 1 else None, optional=True))
    if len(rules) == len(HEAD_MATCHES):
        raise ConfigError("calibration measured no conv or linear kind; nothing to write")
    gpu = max(facts.gpus, key=lambda g: g[1])[0] if facts.gpus else None
    if s.provider == "cuda":
        cc = max((g[1] for g in facts.gpus), default="0.0")
        device = DeviceSpec("cuda", "nvidia", "any", min_compute_capability=cc, description=gpu or "")
    else:
        device = DeviceSpec("cpu", facts.cpu_vendor or "any", facts.arch or "any", description=facts.cpu_model)
    spread = float(np.median([c.staircase.spread for c in result.curves.values()]))
    cal = CalibrationInfo(backend=s.backend, provider=s.provider, precision=s.precision, threads=s.threads,
                          batch=s.batch, blocks=tuple(blocks.items()), cpu_model=facts.cpu_model, cores=facts.cores,
                          arch=facts.arch, gpu=gpu if s.provider == "cuda" else None, ambiguous=tuple(amb),
                          versions=tuple(result.versions.items()), created=result.created, curves=curves_file,
                          spread=round(spread, 4))
    notes = "; ".join(f"{k}: {c.staircase.reason}" for k, c in result.curves.items())
    if amb:
        notes += f"; ambiguous kinds {', '.join(amb)} use block {fallback_block} (best bundled profile)"
    bench = BenchSpec(backend=s.backend, provider=s.provider, precision=s.precision,  # type: ignore[arg-type]
                      batch_sizes=(1, 32), threads=s.threads)
    return HardwareProfile(name=name, schema_version=1, device=device, rules=tuple(rules), bench=bench,
                           description=f"measured on {facts.cpu_model} by hwprune profile calibrate "
                           f"({s.backend}, {s.threads} thread(s), batch {s.batch})",
                           weight_mode="flops", scope="per_layer", notes=notes, calibration=cal)


def curves_csv(result: CalibrationResult) -> str:
    """CSV text: kind, width, median_ms, min_ms, max_ms, then one column per round (ms)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    n_rounds = next(iter(result.curves.values())).rounds_ms.shape[0]
    writer.writerow(["kind", "width", "median_ms", "min_ms", "max_ms", "block",
                     *[f"round{r}_ms" for r in range(n_rounds)]])
    for kind, c in result.curves.items():
        for i, w in enumerate(c.widths):
            col = c.rounds_ms[:, i]
            writer.writerow([kind, w, f"{np.median(col):.6f}", f"{col.min():.6f}", f"{col.max():.6f}",
                             c.staircase.block, *[f"{v:.6f}" for v in col]])
    return buf.getvalue()


def plot_curves(result: CalibrationResult, path: Path) -> Path:
    """PNG: one panel per kind, median latency vs width with the min-max band and the block's multiples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwprune.base.files import atomic_path

    kinds = list(result.curves)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        c = result.curves[kind]
        w = np.asarray(c.widths)
        ax.fill_between(w, c.rounds_ms.min(0), c.rounds_ms.max(0), alpha=0.25, label="min-max over rounds")
        ax.plot(w, c.median_ms, lw=1, label="median")
        b = c.staircase.block
        on = w % b == 0
        ax.plot(w[on], c.median_ms[on], "o", ms=3, label=f"multiples of {b}")
        ax.set_title(f"{kind}: block {b}{' (ambiguous)' if c.staircase.ambiguous else ''}", fontsize=9)
        ax.set_xlabel("width (channels)")
        ax.set_ylabel("latency (ms)")
        ax.legend(fontsize=7)
    s = result.settings
    fig.suptitle(f"{s.backend} {s.threads} thread(s), batch {s.batch}, {result.machine.cpu_model}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def write_calibration(result: CalibrationResult, out: Path, *, name: str | None = None,
                      fallback_block: int = 8) -> tuple[HardwareProfile, dict[str, Path]]:
    """Write ``out`` (the profile YAML), ``<stem>.curves.csv`` and ``<stem>.curves.png`` beside it, atomically.

    The YAML is loaded back with ``load_profile`` (validated) before this returns.
    """
    from hwprune.base.files import atomic_write_text
    from hwprune.profiles import load_profile, profile_to_yaml

    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--out must end in .yaml or .yml, got {out}")
    csv_path = out.with_name(out.stem + ".curves.csv")
    png_path = out.with_name(out.stem + ".curves.png")
    profile = calibrated_profile(result, name=name or out.stem, fallback_block=fallback_block,
                                 curves_file=csv_path.name)
    atomic_write_text(csv_path, curves_csv(result))
    plot_curves(result, png_path)
    header = (f"# Measured by 'hwprune profile calibrate' on {result.machine.cpu_model} in {result.seconds:.0f} s; "
              f"curves: {csv_path.name}, {png_path.name}\n")
    atomic_write_text(out, header + profile_to_yaml(profile))
    loaded = load_profile(out)
    if loaded != profile:
        raise ConfigError(f"{out}: the written profile does not load back to the same profile")
    return loaded, {"profile": out, "csv": csv_path, "png": png_path}
