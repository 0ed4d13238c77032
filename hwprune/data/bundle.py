"""``DatasetBundle`` and the shared preprocessing: stratified splits, resizing, normalisation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from hwprune.base.errors import ConfigError

__all__ = ["DatasetBundle", "stratified_split", "stratified_subset", "finalize"]

_MIN_STD = 1e-6  # a constant channel is scaled by 1 instead of 1/0


@dataclass(frozen=True)
class DatasetBundle:
    """Train and test splits plus what a model and an inference pipeline need to know.

    Attributes:
        train, test: ``TensorDataset(images, labels)``; images float32 ``(N, C, H, W)`` normalised
            with ``preprocessing["mean"/"std"]`` (per channel, computed on the training split),
            labels int64 ``(N,)`` in ``[0, num_classes)``.
        val: the validation split carved (stratified) from the training images, normalised like
            them; None with ``val_fraction = 0``. For model selection and per-epoch curves, so the
            test split is only evaluated at the end.
        preprocessing: ``{"mean": [C], "std": [C], "layout": "NCHW", "dtype": "float32",
            "scale": divisor applied to raw pixels, "resize": None or {"from", "to", "mode"}}``.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    in_channels: int
    image_size: int
    preprocessing: dict[str, Any] = field(default_factory=dict)
    val: TensorDataset | None = None

    @property
    def split_sizes(self) -> dict[str, int]:
        """Images per split: ``{"train", "val", "test"}``."""
        return {"train": len(self.train), "val": len(self.val) if self.val is not None else 0,
                "test": len(self.test)}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.in_channels, self.image_size, self.image_size)


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes proportionally to ``counts`` (largest remainder, ties by class)."""
    n = int(counts.sum())
    exact = counts * (total / n)
    base: np.ndarray = np.minimum(np.floor(exact).astype(np.int64), counts)
    rest = total - int(base.sum())
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - base[c]), c))
    for c in order:
        if rest <= 0:
            break
        if base[c] < counts[c]:
            base[c] += 1
            rest -= 1
    return base


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified random subset of ``size`` elements of ``labels`` (N,)."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    take = _allocate(counts, min(size, len(labels)))
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=False)]
    out: np.ndarray = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    return out


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified ``(train_idx, test_idx)``; test size ``ceil(test_fraction * N)`` as sklearn."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(labels)
    test_idx = stratified_subset(labels, math.ceil(test_fraction * n), seed)
    mask = np.ones(n, dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    down = size < max(x.shape[-2:])
    out = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=down)
    return out


def finalize(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    num_classes: int,
    scale: float,
    image_size: int | None,
    train_limit: int | None,
    seed: int,
    val_fraction: float = 0.0,
    normalize: bool = True,
    resize_info: dict[str, Any] | None = None,
) -> DatasetBundle:
    """Turn raw ``(N, C, H, W)`` arrays into a :class:`DatasetBundle`.

    Steps: ``train_limit`` stratified subsample of the training split -> ``val_fraction`` of it
    held out as the validation split (stratified, ``ceil(val_fraction * N)`` images) -> divide by
    ``scale`` -> bilinear resize to ``image_size`` -> per-channel standardisation with the
    statistics of the remaining training images. ``seed`` draws the subset and the validation
    split. ``resize_info`` records a resize the reader already did (image folders). The parameters
    are the two raw splits, what the reader knows about them and the user's options, in one call.
    """
    if train_limit is not None:
        if isinstance(train_limit, bool) or not isinstance(train_limit, int) or train_limit < 1:
            raise ConfigError(f"train_limit must be a positive integer or None, got {train_limit!r}")
        if train_limit < len(y_train):
            keep = stratified_subset(y_train, train_limit, seed)
            x_train, y_train = x_train[keep], y_train[keep]
    x_val = y_val = None
    if val_fraction:
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
        tr, va = stratified_split(y_train, val_fraction, seed + 1)  # seed + 1: not the subset's draw
        x_val, y_val, x_train, y_train = x_train[va], y_train[va], x_train[tr], y_train[tr]
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"image_size must be a positive integer or None, got {image_size!r}")
    tensors = []
    for x in (x_train, x_test) if x_val is None else (x_train, x_test, x_val):
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if scale != 1.0:
            t = t / float(scale)
        tensors.append(t)
    native = int(tensors[0].shape[-1])
    resize = resize_info
    if image_size is not None and image_size != native:
        tensors = [_resize(t, image_size) for t in tensors]
        resize = {"from": native, "to": image_size, "mode": "bilinear"}
    channels = int(tensors[0].shape[1])
    if normalize and len(tensors[0]) > 0:
        mean = tensors[0].double().mean(dim=(0, 2, 3))
        std = tensors[0].double().std(dim=(0, 2, 3), unbiased=False).clamp_min(_MIN_STD)
    else:
        mean, std = torch.zeros(channels, dtype=torch.float64), torch.ones(channels, dtype=torch.float64)
    shape = (1, channels, 1, 1)
    m32, s32 = mean.float().view(shape), std.float().view(shape)
    tensors = [((t - m32) / s32).contiguous() for t in tensors]
    labels = [torch.from_numpy(np.asarray(y, dtype=np.int64).copy())
              for y in ((y_train, y_test) if y_val is None else (y_train, y_test, y_val))]
    preprocessing = {
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "layout": "NCHW",
        "dtype": "float32",
        "scale": float(scale),
        "resize": resize,
    }
    return DatasetBundle(
        name=name,
        train=TensorDataset(tensors[0], labels[0]),
        test=TensorDataset(tensors[1], labels[1]),
        num_classes=int(num_classes),
        in_channels=channels,
        image_size=int(tensors[0].shape[-1]),
        preprocessing=preprocessing,
        val=TensorDataset(tensors[2], labels[2]) if len(tensors) > 2 else None,
    )
