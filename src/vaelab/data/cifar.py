"""`data=cifar10`: CIFAR-10's python batches, read here without running their pickles' code.

The files are torchvision's layout, `<data_dir>/cifar-10-batches-py/data_batch_1` ... `_5`
and `test_batch`: each a Python 2 pickle of a dict whose `data` is an (N, 3072) uint8 array
(the red, green and blue planes of 32 x 32 images) and `labels` a list of N ints. They are
read with an unpickler that builds only dicts, lists, strings, numbers and numpy arrays, so
a file that asks for any other object is refused instead of run. torchvision's own reader
would check each file's MD5 (files a test writes would fail it) and unpickle without limit;
its download is used, with the archive's MD5 checked.
"""

import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets
from torchvision.datasets.utils import download_and_extract_archive

from vaelab.errors import DataError

FOLDER = datasets.CIFAR10.base_folder  # cifar-10-batches-py
URL, ARCHIVE, ARCHIVE_MD5 = (
    datasets.CIFAR10.url,
    datasets.CIFAR10.filename,
    datasets.CIFAR10.tgz_md5,
)
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
# What a numpy array pickles into (numpy 1 names it numpy.core, numpy 2 numpy._core), and
# how Python 3 writes bytes into a protocol-2 pickle (_codecs.encode of a latin-1 string).
_ALLOWED = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR batch never does")


def _batch(path: Path, fix: str) -> tuple[Tensor, Tensor]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one batch file."""
    try:
        with path.open("rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
        images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(labels, dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{path} is not a CIFAR-10 batch ({reason}); {fix}") from None
    if len(labels) != len(images):
        raise DataError(f"{path} holds {len(images)} images but {len(labels)} labels; {fix}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def load_cifar10(root: Path, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """(train images, train labels, test images, test labels, source) from
    `root/cifar-10-batches-py/`, downloaded there first when absent and `download`."""
    folder = root / FOLDER
    files = [folder / name for name in (*TRAIN_FILES, TEST_FILE)]
    present = [f for f in files if f.is_file()]
    source = f"batches:{folder}"
    if not present:
        if not download:
            raise DataError(
                f"CIFAR-10 not found in {folder}: put the python batches there (data_batch_1 "
                "... 5, test_batch), or run online with data.download=true"
            )
        _download(root)
        source = "download"
    elif len(present) < len(files):
        missing = ", ".join(f.name for f in files if f not in present)
        raise DataError(
            f"{folder} holds only part of CIFAR-10 ({missing} missing); delete it and download "
            "again with data.download=true, or copy every batch there"
        )
    fix = f"delete {folder} and download again with data.download=true"
    train = [_batch(f, fix) for f in files[:-1]]
    test_images, test_labels = _batch(files[-1], fix)
    train_images = torch.cat([images for images, _ in train])
    train_labels = torch.cat([labels for _, labels in train])
    return train_images, train_labels, test_images, test_labels, source


def _download(root: Path) -> None:
    """torchvision's download and extraction (the archive's MD5 checked) into a temporary
    folder, whose batches folder is renamed into place once complete."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
    try:
        download_and_extract_archive(URL, str(tmp), filename=ARCHIVE, md5=ARCHIVE_MD5)
        (tmp / FOLDER).replace(root / FOLDER)
    except (OSError, RuntimeError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(
            f"could not download CIFAR-10 from {URL} ({reason}); put the python batches in "
            f"{root / FOLDER}, or run where the address can be reached"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
