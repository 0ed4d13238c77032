"""Offline datasets as normalised float32 NCHW ``TensorDataset`` bundles.

``load_dataset(name, *, data_dir=None, image_size=None, train_limit=None, seed=0, val_fraction=0.0)``
-> ``DatasetBundle`` (train, optional val carved from train, test);
names from ``list_datasets()``: digits, mnist-5k, mnist, fashion-mnist, cifar10, imagefolder, synthetic.
"""

from __future__ import annotations

from hwprune.data.bundle import DatasetBundle, stratified_split, stratified_subset
from hwprune.data.datasets import list_datasets, load_dataset
from hwprune.data.formats import read_idx, safe_unpickle

__all__ = [
    "DatasetBundle",
    "load_dataset",
    "list_datasets",
    "stratified_split",
    "stratified_subset",
    "read_idx",
    "safe_unpickle",
]
