"""File-format readers: IDX (MNIST family), CIFAR-10 pickle batches (safe), image folders.

Every reader raises :class:`~hwprune.base.errors.DataError` naming the path and what was expected.
"""

from __future__ import annotations

import gzip
import importlib
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from hwprune.base.errors import DataError, MissingBackendError

__all__ = [
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "read_idx",
    "safe_unpickle",
    "read_cifar10_dir",
    "read_image_folder", "image_folder_splits",
    "IMAGE_EXTENSIONS",
]

IDX_IMAGES_MAGIC = 0x00000803  # ubyte, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # ubyte, 1 dimension (N,)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".bmp"})
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def _read_maybe_gzip(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip stream ({exc})") from exc
    return raw


def read_idx(path: Path, *, expected_magic: int | None = None) -> np.ndarray:
    """Read a raw or gzipped IDX file into a native-endian array of its declared shape.

    Args:
        path: the file (``.gz`` detected from the content, not the name).
        expected_magic: e.g. :data:`IDX_IMAGES_MAGIC`; any other magic raises ``DataError``.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    kinds = {IDX_IMAGES_MAGIC: "IDX image file", IDX_LABELS_MAGIC: "IDX label file"}
    kind = kinds.get(expected_magic if expected_magic is not None else -1, "IDX file")
    if len(raw) < 4:
        raise DataError(f"{path}: expected {kind}, got only {len(raw)} bytes")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"{path}: expected {kind} with magic 0x{expected_magic:08x}, got 0x{magic:08x}")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file (magic 0x{magic:08x})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header, expected {header} bytes, got {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX shape {dims} needs {expected} data bytes after the {header}-byte header, "
            f"got {len(raw) - header} (truncated or corrupt file)"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _numpy_attr(name: str) -> Any:
    for module in ("numpy._core.multiarray", "numpy.core.multiarray", "numpy._core.numeric", "numpy.core.numeric"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, name):
            return getattr(mod, name)
    raise pickle.UnpicklingError(f"numpy has no {name}")


_NUMPY_FUNCS = {"_reconstruct", "scalar", "_frombuffer"}
_NUMPY_MODULES = {"numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric"}
_SAFE_BUILTINS = {"bytes", "bytearray", "list", "dict", "tuple", "set", "frozenset", "int", "float", "str", "complex"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only numpy array reconstruction and plain builtin types; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        """Allow only the plain containers a CIFAR-10 pickle holds; anything else is a DataError."""
        if module in _NUMPY_MODULES and name in _NUMPY_FUNCS:
            return _numpy_attr(name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            return getattr(importlib.import_module("numpy.dtypes"), name)
        if module == "_codecs" and name == "encode":  # Python 3 protocol-2 bytes
            return importlib.import_module("_codecs").encode
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return getattr(importlib.import_module("builtins"), name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden")


def safe_unpickle(path: Path) -> Any:
    """Unpickle ``path`` allowing only plain containers, bytes/str/numbers and numpy arrays.

    Pickles that reference any other global (``os.system``, ``eval``, custom classes) are rejected
    with ``DataError`` before anything is called.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open("rb") as fh:
            return _RestrictedUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: refused or corrupt pickle: {exc}") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as exc:
        raise DataError(f"{path}: corrupt pickle ({exc.__class__.__name__}: {exc})") from exc


def _key(k: Any) -> Any:
    return k.decode("latin1") if isinstance(k, bytes) else k


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a CIFAR-10 batch dict, got {type(obj).__name__}")
    d = {_key(k): v for k, v in obj.items()}
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: expected 'data' uint8 array (N, 3072), got {type(data).__name__} {shape}")
    if not isinstance(labels, (list, np.ndarray)):
        raise DataError(f"{path}: expected 'labels' list of N ints, got {type(labels).__name__}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: 'labels' are not integers ({exc})") from exc
    if y.shape != (data.shape[0],) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{path}: expected {data.shape[0]} labels in 0..9, got shape {y.shape}")
    return data.reshape(-1, 3, 32, 32), y


def read_cifar10_dir(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``data_batch_1..5`` + ``test_batch`` from ``data_dir`` or ``data_dir/cifar-10-batches-py``.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.
    """
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"{root}: missing CIFAR-10 python batches {missing} (expected {', '.join(names)})")
    parts = [_cifar_batch(root / n) for n in names]
    x_train = np.concatenate([p[0] for p in parts[:5]])
    y_train = np.concatenate([p[1] for p in parts[:5]])
    return x_train, y_train, parts[5][0], parts[5][1]


def _pillow() -> Any:
    try:
        return importlib.import_module("PIL.Image")
    except ImportError as exc:
        raise MissingBackendError(
            "the imagefolder dataset needs Pillow; install it with: pip install pillow"
        ) from exc


def read_image_folder(root: Path, image_size: int, classes: list[str] | None = None,
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read ``root/<class>/<image>`` files, resized (bilinear) to ``image_size`` x ``image_size``.

    Images are converted to grayscale (1 channel) when every file is grayscale, else to RGB.

    Args:
        root: the folder of class subdirectories.
        image_size: side length of the resized images.
        classes: the class names in label order (a second split must use the first one's); None:
            the sorted subdirectories that hold images.

    Returns:
        ``(x, y, class_names)``: uint8 ``(N, C, S, S)``, int64 ``(N,)``, the class names.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (expected class subdirectories of images)")
    image_mod = _pillow()
    found: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if imgs:
            found[sub.name] = imgs
    if not found:
        raise DataError(
            f"{root}: no images found (expected class subdirectories with {', '.join(sorted(IMAGE_EXTENSIONS))} "
            "files, or train/ and val/ (or test/) folders of them)"
        )
    if classes is None:
        classes = list(found)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{root}: classes {unknown} are not in the training split (classes: {', '.join(classes)})")
    files = [(path, classes.index(name)) for name, paths in found.items() for path in paths]
    images = []
    for path, _ in files:
        try:
            with image_mod.open(path) as img:
                img.load()
                images.append(img.copy())
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: cannot decode image ({exc})") from exc
    gray = all(img.mode in _GRAY_MODES for img in images)
    mode = "L" if gray else "RGB"
    resample = getattr(image_mod, "Resampling", image_mod).BILINEAR
    arrays = []
    for img in images:
        arr = np.asarray(img.convert(mode).resize((image_size, image_size), resample), dtype=np.uint8)
        arrays.append(arr[None] if gray else arr.transpose(2, 0, 1))
    x = np.stack(arrays)
    y = np.array([label for _, label in files], dtype=np.int64)
    return x, y, list(classes)


def image_folder_splits(root: Path) -> tuple[Path, Path] | None:
    """``(train dir, test dir)`` of a split image folder (``train/`` plus ``test/``, ``val/`` or ``valid/``), or None.

    A folder whose subdirectories are the classes themselves (a single root) gives None.
    """
    root = Path(root)
    train = root / "train"
    if not train.is_dir():
        return None
    for name in ("test", "val", "valid", "validation"):
        if (root / name).is_dir():
            return train, root / name
    return None
