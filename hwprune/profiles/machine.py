"""Per-device profile selection: detect this machine, rank the hardware profiles, optionally time them.

Ranking is deterministic and explained. A ``cuda`` profile matches only if a GPU with compute
capability >= ``device.min_compute_capability`` exists; a ``cpu`` profile matches if its ``arch``
(``any`` = every arch) and all its ISA flags are present; generic profiles (cpu, arch ``any``, no ISA)
match every machine with a low score. Scores (higher = more specific):

* generic: ``GENERIC_SCORE`` (+1 if its groups are removable by surgery, so it can speed up a model);
* cpu with an arch: ``CPU_BASE_SCORE + CPU_ISA_SCORE * len(isa)`` (avx512 > avx2 > generic);
* cuda: ``CUDA_BASE_SCORE + 10 * min_cc``, ``+CUDA_FAMILY_BONUS`` if the GPU's architecture family
  (from its compute capability) equals the profile's ``arch``, ``-CUDA_CHIP_PENALTY`` if the profile
  names a chip-specific capability (minor != 0, e.g. Jetson Orin's 8.7) that differs from the GPU's.

A profile written by ``hwprune profile calibrate`` (it has a ``calibration`` block) matches only
the machine it was measured on (same CPU model and core count; same GPU for cuda) and then scores
``CALIBRATED_SCORE`` above what its device section alone would score, so ``--profile auto`` prefers
a calibration of this machine over every bundled profile. Calibrated profiles are read from the
user's profile directory (``hwprune.profiles.io.user_profiles_dir``).

Ties are broken by profile name. :func:`hwprune.pipeline.select.measure_profiles` times every matching
profile's pruned model on THIS machine and recommends the fastest.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwprune.base.errors import ConfigError
from hwprune.profiles.io import list_profiles, load_profile, load_user_profiles
from hwprune.profiles.schema import HardwareProfile, NoGranularity

__all__ = [
    "MachineFacts",
    "ProfileMatch",
    "GENERIC_SCORE",
    "CPU_BASE_SCORE",
    "CPU_ISA_SCORE",
    "CUDA_BASE_SCORE",
    "CUDA_FAMILY_BONUS",
    "CUDA_CHIP_PENALTY",
    "CALIBRATED_SCORE",
    "cuda_family",
    "facts_from_cpuinfo",
    "detect_machine",
    "match_profile",
    "rank_profiles",
    "best_profile",
    "load_all",
]

GENERIC_SCORE = 1.0
CPU_BASE_SCORE = 10.0
CPU_ISA_SCORE = 5.0
CUDA_BASE_SCORE = 100.0
CUDA_FAMILY_BONUS = 30.0
CUDA_CHIP_PENALTY = 20.0
CALIBRATED_SCORE = 1000.0

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}
_VENDORS = {"genuineintel": "intel", "authenticamd": "amd", "hygongenuine": "hygon", "0x41": "arm",
            "0x61": "apple", "0xc0": "ampere", "0x48": "hisilicon", "0x51": "qualcomm", "0x4e": "nvidia"}
# Compute capability major.minor -> architecture family name as used in profile ``device.arch``.
_CUDA_FAMILIES: tuple[tuple[tuple[int, int], str], ...] = (
    ((12, 0), "blackwell"), ((10, 0), "blackwell"), ((9, 0), "hopper"), ((8, 9), "ada"), ((8, 0), "ampere"),
    ((7, 5), "turing"), ((7, 0), "volta"), ((6, 0), "pascal"), ((0, 0), "older"))


def _norm_arch(arch: str) -> str:
    a = arch.strip().lower()
    return _ARCH_ALIASES.get(a, a)


def _cc(text: str) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        raise ConfigError(f"compute capability must look like '8.0', got {text!r}") from None


def cuda_family(cc: str) -> str:
    """Architecture family of a compute capability ``"MAJOR.MINOR"`` (e.g. ``"8.6"`` -> ``"ampere"``)."""
    value = _cc(cc)
    return next(name for floor, name in _CUDA_FAMILIES if value >= floor)


@dataclass(frozen=True)
class MachineFacts:
    """What selection needs to know about a machine.

    ``arch`` is normalised (``x86_64`` / ``aarch64``); ``isa`` holds lower-case CPU flags (on
    aarch64 ``neon`` is added when ``asimd`` is present); ``gpus`` is ``((name, "MAJOR.MINOR"), ...)``.
    """

    cpu_vendor: str
    cpu_model: str
    arch: str
    isa: frozenset[str] = frozenset()
    cores: int = 1
    gpus: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (ISA flags sorted)."""
        return {"cpu_vendor": self.cpu_vendor, "cpu_model": self.cpu_model, "arch": self.arch,
                "isa": sorted(self.isa), "cores": self.cores, "gpus": [list(g) for g in self.gpus]}


@dataclass(frozen=True)
class ProfileMatch:
    """One ranked profile: ``score`` (0 when not matched) and the human-readable ``reasons``."""

    name: str
    score: float
    matched: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


def facts_from_cpuinfo(text: str, machine: str, *, cores: int = 1,
                       gpus: Sequence[tuple[str, str]] = ()) -> MachineFacts:
    """Build ``MachineFacts`` from ``/proc/cpuinfo`` text and ``platform.machine()``."""
    vendor = model = fallback_model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("vendor_id", "cpu implementer") and not vendor:
            vendor = _VENDORS.get(value.lower(), value.lower())
        elif key in ("model name", "cpu model") and not model:
            model = value
        elif key in ("model", "hardware") and not value.isdigit():
            fallback_model = fallback_model or value
        elif key in ("flags", "features"):
            flags.update(f.lower() for f in value.split())
    arch = _norm_arch(machine)
    if arch == "aarch64":
        if not flags:  # no flag list (e.g. macOS): Armv8-A application cores have Advanced SIMD
            flags.add("asimd")
        if "asimd" in flags:
            flags.add("neon")
    return MachineFacts(cpu_vendor=vendor or "unknown", cpu_model=model or fallback_model or machine or "unknown",
                        arch=arch, isa=frozenset(flags), cores=max(1, int(cores)),
                        gpus=tuple((str(n), str(c)) for n, c in gpus))


def _detect_gpus() -> tuple[tuple[str, str], ...]:
    if importlib.util.find_spec("torch") is None:
        return ()
    import torch

    if not torch.cuda.is_available():
        return ()
    out = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        out.append((torch.cuda.get_device_name(i), f"{major}.{minor}"))
    return tuple(out)


def detect_machine() -> MachineFacts:
    """Facts about THIS machine: /proc/cpuinfo flags, ``platform.machine()``, psutil cores, torch GPUs."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text(errors="replace") if cpuinfo.is_file() else ""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        cores = os.cpu_count() or 1
    facts = facts_from_cpuinfo(text, platform.machine(), cores=cores, gpus=_detect_gpus())
    if facts.cpu_model == platform.machine() and platform.processor():
        facts = dataclasses.replace(facts, cpu_model=platform.processor())
    return facts


def _is_generic(p: HardwareProfile) -> bool:
    return p.device.kind == "cpu" and p.device.arch.lower() == "any" and not p.device.isa


def _removable(p: HardwareProfile) -> bool:
    grans = [r.granularity for r in p.rules_for_phase("structured") if not isinstance(r.granularity, NoGranularity)]
    return bool(grans) and all(g.removable for g in grans)


def _match_cuda(p: HardwareProfile, facts: MachineFacts) -> ProfileMatch:
    need = p.device.min_compute_capability or "0.0"
    if not facts.gpus:
        return ProfileMatch(p.name, 0.0, False, [f"needs a CUDA GPU with compute capability >= {need}; none detected"])
    ok = [(n, c) for n, c in facts.gpus if _cc(c) >= _cc(need)]
    if not ok:
        have = ", ".join(f"{n} ({c})" for n, c in facts.gpus)
        return ProfileMatch(p.name, 0.0, False, [f"needs compute capability >= {need}; GPUs: {have}"])
    name, cc = max(ok, key=lambda g: _cc(g[1]))
    major, minor = _cc(need)
    score = CUDA_BASE_SCORE + 10.0 * (major + minor / 10.0)
    reasons = [f"GPU {name} has compute capability {cc} >= {need} (+{score:g})"]
    family = cuda_family(cc)
    if family == p.device.arch.lower():
        score += CUDA_FAMILY_BONUS
        reasons.append(f"GPU family {family} equals profile arch (+{CUDA_FAMILY_BONUS:g})")
    else:
        reasons.append(f"GPU family {family} differs from profile arch {p.device.arch} (+0)")
    if minor != 0 and _cc(cc) != (major, minor):
        score -= CUDA_CHIP_PENALTY
        reasons.append(f"chip-specific capability {need} differs from the GPU's {cc} (-{CUDA_CHIP_PENALTY:g})")
    return ProfileMatch(p.name, score, True, reasons)


def match_profile(profile: HardwareProfile, facts: MachineFacts) -> ProfileMatch:
    """Score one profile against ``facts``; ``reasons`` says why it matched or not."""
    cal = profile.calibration
    if cal is None:
        return _match_device(profile, facts)
    gpu = max(facts.gpus, key=lambda g: _cc(g[1]))[0] if facts.gpus else None
    where = f"calibrated on {cal.cpu_model} ({cal.cores} cores{', ' + cal.gpu if cal.gpu else ''})"
    if not cal.matches_machine(facts.cpu_model, facts.cores, gpu):
        here = f"{facts.cpu_model} ({facts.cores} cores{', ' + gpu if gpu else ''})"
        return ProfileMatch(profile.name, 0.0, False, [f"{where}; this machine is {here}"])
    base = _match_device(profile, facts)
    if not base.matched:
        return base
    note = f"{where} = this machine, {cal.backend} {cal.threads} thread(s) (+{CALIBRATED_SCORE:g})"
    return ProfileMatch(profile.name, base.score + CALIBRATED_SCORE, True, [note, *base.reasons])


def _match_device(profile: HardwareProfile, facts: MachineFacts) -> ProfileMatch:
    dev = profile.device
    if dev.kind == "cuda":
        return _match_cuda(profile, facts)
    if _is_generic(profile):
        bonus = 1.0 if _removable(profile) else 0.0
        reasons = [f"generic cpu profile: matches any machine (+{GENERIC_SCORE:g})"]
        reasons.append("groups are removable by surgery (+1)" if bonus
                       else "some groups are masks/kernel shapes, not removable (+0)")
        return ProfileMatch(profile.name, GENERIC_SCORE + bonus, True, reasons)
    reasons = []
    ok = True
    want_arch = _norm_arch(dev.arch)
    if want_arch != "any":
        if want_arch == facts.arch:
            reasons.append(f"arch {facts.arch} matches (+{CPU_BASE_SCORE:g})")
        else:
            ok = False
            reasons.append(f"arch {dev.arch} required, machine is {facts.arch}")
    missing = [f for f in dev.isa if f.lower() not in facts.isa]
    present = [f for f in dev.isa if f.lower() in facts.isa]
    if present:
        reasons.append(f"ISA {', '.join(present)} present (+{CPU_ISA_SCORE * len(present):g})")
    if missing:
        ok = False
        reasons.append(f"ISA {', '.join(missing)} missing")
    if not ok:
        return ProfileMatch(profile.name, 0.0, False, reasons)
    return ProfileMatch(profile.name, CPU_BASE_SCORE + CPU_ISA_SCORE * len(dev.isa), True, reasons)


def load_all(profiles: Sequence[HardwareProfile | str] | None) -> list[HardwareProfile]:
    """The given profiles (names are loaded), or every bundled and user profile when None.

    A user profile whose name equals a bundled one (or an earlier user profile) is left out.
    """
    if profiles is not None:
        return [p if isinstance(p, HardwareProfile) else load_profile(p) for p in profiles]
    out = [load_profile(n) for n in list_profiles()]
    seen = {p.name for p in out}
    for p in load_user_profiles():
        if p.name not in seen:
            out.append(p)
            seen.add(p.name)
    return out


def rank_profiles(facts: MachineFacts, profiles: Sequence[HardwareProfile | str] | None = None) -> list[ProfileMatch]:
    """Every profile (default: the bundled ones) ranked: matched first, score descending, then name."""
    matches = [match_profile(p, facts) for p in load_all(profiles)]
    return sorted(matches, key=lambda m: (not m.matched, -m.score, m.name))


def best_profile(facts: MachineFacts | None = None,
                 profiles: Sequence[HardwareProfile | str] | None = None) -> HardwareProfile:
    """The top-ranked matching profile for ``facts`` (default: this machine); what ``--profile auto`` uses."""
    facts = facts or detect_machine()
    loaded = {p.name: p for p in load_all(profiles)}
    ranked = rank_profiles(facts, list(loaded.values()))
    if not ranked or not ranked[0].matched:
        raise ConfigError(f"no hardware profile matches this machine ({facts.arch}, {facts.cpu_model}); "
                          f"valid profiles: {', '.join(sorted(loaded))}")
    return loaded[ranked[0].name]
