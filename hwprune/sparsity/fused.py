"""Optional fused C kernels for the WGSEF prox, compiled on first use with the system C compiler.

Eager PyTorch runs dozens of small ops per call on the shapes that matter for large models (2:4
blocks, channel groups of 64 weights), far from memory speed. ``prox_kernel.c`` does the same math in
one pass: the N:M prox per block (root in double, the same threshold tests as the eager code) and the
per-scope root of the channel-group prox (bracketed Newton on the piecewise linear ``h``, double).
It is built with ``cc -O3 -march=native -ffp-contract=off -fno-trapping-math`` (about a second) into
``$HWPRUNE_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/hwprune/kernels`` or ``~/.cache/hwprune/kernels``),
keyed by the source, flags and CPU model, and loaded with ``ctypes``. The N:M root is double; the
2:4 closed form runs in the data's precision (float32 data: float32 root and scale, 16 lanes).

Policy (``$HWPRUNE_PROX_KERNEL``): ``auto`` (default) uses the kernel for calls with at least
``MIN_ELEMENTS`` elements when it compiles; ``on`` for every call (tests); ``off`` never. Without a
compiler everything runs eagerly; the eager code in ``hwprune.sparsity.wgsef`` is the reference the
tests compare the kernel against.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["MIN_ELEMENTS", "MAX_M", "mode", "available", "use_for", "nm_applicable", "all_finite", "nm_prox_",
           "group_scales", "group_prox_", "kernel_path"]

log = logging.getLogger(__name__)

MIN_ELEMENTS = 1 << 16  # auto mode: below this, call overhead and eager speed are both negligible
MAX_M = 64  # largest N:M block the kernel handles
_SOURCE = Path(__file__).with_name("prox_kernel.c")
_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-shared")
_MODES = ("auto", "on", "off")
_lib: ctypes.CDLL | None = None
_tried = False


def mode() -> str:
    """``$HWPRUNE_PROX_KERNEL`` (auto, on, off); anything else counts as auto."""
    value = os.environ.get("HWPRUNE_PROX_KERNEL", "auto").strip().lower()
    return value if value in _MODES else "auto"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def kernel_path() -> Path:
    """Where the compiled kernel for this source, these flags and this CPU lives."""
    key = hashlib.sha1(_SOURCE.read_bytes() + " ".join(_FLAGS).encode() + _cpu_model().encode()
                       + platform.machine().encode()).hexdigest()[:16]
    root, xdg = os.environ.get("HWPRUNE_KERNEL_CACHE"), os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else (Path(xdg) if xdg else Path.home() / ".cache") / "hwprune" / "kernels"
    return base / f"prox_kernel-{key}.so"


def _build(path: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc/gcc) on PATH")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".prox_kernel.", suffix=".so")
    os.close(fd)
    try:
        proc = subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SOURCE), "-lm"], capture_output=True, text=True,
                              timeout=120, check=False)
        if proc.returncode != 0:
            raise OSError(f"{cc} failed: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    try:
        path = kernel_path()
        if not path.is_file():
            _build(path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("fused prox kernel unavailable (%s); using the eager path", exc)
        return None
    i64, dbl, ptr = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
    for name in ("nm_prox_f32", "nm_prox_f64"):
        getattr(lib, name).argtypes = [ptr, i64, ctypes.c_int, ctypes.c_int, dbl]
        getattr(lib, name).restype = None
    for name in ("all_finite_f32", "all_finite_f64"):
        getattr(lib, name).argtypes = [ptr, i64]
        getattr(lib, name).restype = ctypes.c_int
    lib.group_scales.argtypes = [ptr, ptr, dbl, ptr, i64, i64, dbl, ptr]
    for name in ("group_prox_float", "group_prox_double"):
        getattr(lib, name).argtypes = [ptr, i64, i64, i64, ptr, dbl, dbl, ptr]
        getattr(lib, name).restype = ctypes.c_int
    lib.group_scales.restype = None
    _lib = lib
    return lib


def available() -> bool:
    """True if the kernel compiled and loaded (compiles it on the first call)."""
    return _load() is not None


def use_for(numel: int) -> bool:
    """Whether a call over ``numel`` elements should use the kernel under the current mode."""
    m = mode()
    if m == "off" or (m == "auto" and numel < MIN_ELEMENTS):
        return False
    return available()


def nm_applicable(blocks: Tensor, n: int) -> bool:
    """True if the kernel is loaded and takes ``blocks`` (contiguous CPU float32/float64 (B, M), 1 <= n < M <= 64)."""
    m = blocks.shape[-1]
    return (_load() is not None and blocks.device.type == "cpu" and blocks.is_contiguous() and 1 <= n < m <= MAX_M
            and blocks.dtype in (torch.float32, torch.float64))


def all_finite(t: Tensor) -> bool:
    """Whether every element of a contiguous CPU float32/float64 tensor is finite (one read pass in C)."""
    lib = _load()
    if lib is None or t.device.type != "cpu" or not t.is_contiguous() or t.dtype not in (torch.float32, torch.float64):
        return bool(torch.isfinite(t).all())
    fn = lib.all_finite_f32 if t.dtype == torch.float32 else lib.all_finite_f64
    return bool(fn(t.data_ptr(), t.numel()))


def nm_prox_(blocks: Tensor, n: int, lam: float) -> bool:
    """In-place N:M SEF prox of a contiguous CPU (B, M) float32/float64 tensor; False if not applicable."""
    lib = _load()
    m = blocks.shape[-1]
    if lib is None or not nm_applicable(blocks, n):
        return False
    fn = lib.nm_prox_f32 if blocks.dtype == torch.float32 else lib.nm_prox_f64
    fn(blocks.data_ptr(), blocks.shape[0], m, int(n), float(lam))
    return True


def group_scales(z: Tensor, c: Tensor | None, c0: float, k: Tensor, tol: float) -> Tensor | None:
    """Factors u / (u + c), (B, m) float64, for weighted norms ``z`` (B, m), offsets ``c`` (or ``c0``), budgets ``k``.

    ``tol`` is the absolute tolerance on ``h`` per unit of ``max(1, k)``. None when the kernel is unavailable.
    """
    lib = _load()
    if lib is None or z.device.type != "cpu":
        return None
    z = z.to(torch.float64).contiguous()
    cc = None if c is None else c.to(torch.float64).contiguous()
    kk = k.to(torch.float64).contiguous()
    out = torch.empty_like(z)
    lib.group_scales(z.data_ptr(), None if cc is None else cc.data_ptr(), float(c0), kk.data_ptr(), z.shape[0],
                     z.shape[1], float(tol), out.data_ptr())
    return out


def group_prox_(rows: Tensor, k: Tensor, lam: float, tol: float) -> bool | None:
    """Whole in-place prox with uniform weights on contiguous CPU rows (B, m, s): norms, root, scale in C.

    ``k`` (B,) float64. Returns True when done, None when not applicable (layout, dtype, no kernel), and
    False when a group norm is not finite (nothing was written).
    """
    lib = _load()
    if (lib is None or rows.dim() != 3 or rows.device.type != "cpu" or not rows.is_contiguous()
            or rows.dtype not in (torch.float32, torch.float64)):
        return None
    b, m, s = rows.shape
    scratch = torch.empty((b + 1) * m, dtype=torch.float64)
    kk = k.to(torch.float64).contiguous()
    fn = lib.group_prox_float if rows.dtype == torch.float32 else lib.group_prox_double
    return bool(fn(rows.data_ptr(), b, m, s, kk.data_ptr(), float(lam), float(tol), scratch.data_ptr()) == 0)
