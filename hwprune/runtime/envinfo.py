"""Environment description stored next to every benchmark result (CPU, ISA, cores, library versions, GPU)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["collect_env", "ISA_FLAGS"]

# ISA features that matter for inference kernels (x86 and Arm names as they appear in /proc/cpuinfo).
ISA_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
             "asimd", "asimddp", "sve", "sve2", "i8mm", "bf16")
_PACKAGES = {"torch": ("torch",), "onnx": ("onnx",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
             "torch_pruning": ("torch-pruning", "torch_pruning"), "tensorrt": ("tensorrt", "tensorrt-cu12"),
             "openvino": ("openvino",),
             "numpy": ("numpy",), "onnxslim": ("onnxslim",), "hwprune": ("hwprune",)}


def _version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpuinfo(text: str) -> dict[str, Any]:
    """Model name, ISA flags and physical core count from /proc/cpuinfo text."""
    model, flags, cores = None, set(), set()
    phys = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model", "cpu model") and model is None:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
        if phys is not None and core is not None:
            cores.add((phys, core))
            phys = core = None
    return {"cpu_model": model, "isa": [f for f in ISA_FLAGS if f in flags], "physical_cores": len(cores) or None}


def _gpu() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"gpu": None}
    if not torch.cuda.is_available():
        return {"gpu": None, "cuda": torch.version.cuda}
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
            "gpu_count": torch.cuda.device_count(), "cuda": torch.version.cuda}


def collect_env(*, include_gpu: bool = True) -> dict[str, Any]:
    """A JSON-serialisable description of this machine and the relevant library versions.

    Keys: python, implementation, platform, machine, cpu_model, isa (list), physical_cores, logical_cores,
    versions ({torch, onnx, onnxruntime, torch_pruning, tensorrt, ...}: str or None), ort_providers,
    gpu (name or None), compute_capability, cuda. ``include_gpu=False`` skips importing torch.
    """
    cpuinfo = Path("/proc/cpuinfo")
    info = _cpuinfo(cpuinfo.read_text(errors="replace")) if cpuinfo.is_file() else \
        {"cpu_model": None, "isa": [], "physical_cores": None}
    if not info["cpu_model"]:
        info["cpu_model"] = platform.processor() or platform.machine() or None
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False) or info["physical_cores"]
    except ImportError:
        pass
    env: dict[str, Any] = {
        "python": platform.python_version(), "implementation": sys.implementation.name,
        "platform": platform.platform(), "machine": platform.machine(), **info,
        "logical_cores": os.cpu_count(), "versions": {k: _version(v) for k, v in _PACKAGES.items()},
    }
    try:
        import onnxruntime

        env["ort_providers"] = list(onnxruntime.get_available_providers())
    except ImportError:
        env["ort_providers"] = None
    env.update(_gpu() if include_gpu else {"gpu": None})
    return env
