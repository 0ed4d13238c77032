"""The one check of whether a timing backend (runtime + execution provider) can run on this machine.

``backend_problem`` returns ``None`` when ``backend``/``provider`` can be timed here, else one line
saying why not (missing package, missing execution provider, no GPU). ``require_backend`` raises
the same line as a ``MissingBackendError`` that names the pip extra. Every caller (the benchmark
request, the pipeline's bench step and its ONNX Runtime CPU fallback, ``select --measure``,
``profile calibrate``) goes through these two functions. Only ``importlib.util.find_spec`` is used
for absent packages (cheap); onnxruntime is imported only to ask for its CUDA provider.
"""

from __future__ import annotations

import importlib.util
import sys

from hwprune.base.errors import ConfigError, MissingBackendError

__all__ = ["BACKEND_NAMES", "EXTRAS", "backend_problem", "require_backend", "installed"]

BACKEND_NAMES: tuple[str, ...] = ("onnxruntime", "openvino", "tensorrt")
# backend (or backend/provider) -> pip extra of hwprune that installs it
EXTRAS: dict[str, str] = {"onnxruntime": "onnx", "onnxruntime/cuda": "onnx-gpu", "openvino": "openvino",
                          "tensorrt": "trt"}
_PROVIDERS: dict[str, tuple[str, ...]] = {"onnxruntime": ("cpu", "cuda"), "openvino": ("cpu",),
                                          "tensorrt": ("cuda",)}


def installed(module: str) -> bool:
    """True if ``module`` is imported already or can be found on the import path (it is not imported)."""
    if sys.modules.get(module) is not None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package or a half-removed module
        return False


def _cuda_gpu() -> bool:
    if not installed("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def backend_problem(backend: str, provider: str = "cpu", *, need_gpu_check: bool = True) -> str | None:
    """``None`` if ``backend`` with ``provider`` can time models here, else why not (one line).

    Args:
        backend: ``onnxruntime``, ``openvino`` or ``tensorrt``.
        provider: ``cpu`` or ``cuda`` (``openvino`` supports ``cpu`` only, ``tensorrt`` ``cuda`` only).
        need_gpu_check: for ``tensorrt``, also require a CUDA device visible to torch.

    Raises:
        ConfigError: unknown backend or a provider the backend does not have.
    """
    if backend not in _PROVIDERS:
        raise ConfigError(f"unknown backend '{backend}'; valid: {', '.join(BACKEND_NAMES)}")
    if provider not in _PROVIDERS[backend]:
        raise ConfigError(f"backend '{backend}' has no provider '{provider}'; valid: {', '.join(_PROVIDERS[backend])}")
    extra = EXTRAS.get(f"{backend}/{provider}", EXTRAS[backend])
    hint = f"install it with: pip install 'hwprune[{extra}]'"
    if backend == "tensorrt":
        if not installed("tensorrt"):
            return f"backend 'tensorrt' is not installed; {hint}"
        if need_gpu_check and not _cuda_gpu():
            return "backend 'tensorrt' needs a CUDA GPU; none is visible to torch"
        return None
    if not installed(backend):
        return f"backend '{backend}' is not installed; {hint}"
    if backend == "onnxruntime" and provider == "cuda":
        import onnxruntime

        have = list(onnxruntime.get_available_providers())
        if "CUDAExecutionProvider" not in have:
            return f"onnxruntime has no CUDAExecutionProvider (available: {have}); {hint}"
    return None


def require_backend(backend: str, provider: str = "cpu", *, need_gpu_check: bool = False) -> None:
    """Raise ``MissingBackendError`` (message from :func:`backend_problem`) unless the backend runs here."""
    problem = backend_problem(backend, provider, need_gpu_check=need_gpu_check)
    if problem is not None:
        raise MissingBackendError(problem)
