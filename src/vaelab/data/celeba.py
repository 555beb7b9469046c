"""`data=celeba`: CelebA's aligned faces in torchvision's layout, decoded once and cached."""

import shutil
import tempfile
from http.client import HTTPException
from pathlib import Path

import torch
from torchvision import datasets

from vaelab.data.downloads import one_line_reason
from vaelab.data.images import content_key, decode_cached
from vaelab.data.splits import DatasetSplits, files_split
from vaelab.errors import DataError

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
        return files_split(images, labels, names, source, labelled=False)
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
