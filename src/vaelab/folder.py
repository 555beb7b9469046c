"""`data=folder`: a folder of your own PNG and JPEG images, decoded once and cached.

Images are found under `path` at any depth; hidden files and folders (a name that starts
with a dot: .DS_Store, ._x.png, .ipynb_checkpoints/) are not images of the set. If they all
lie in subfolders, the first subfolder of each names its class (as torchvision's
ImageFolder); if they all lie in `path` itself, there are no labels. Each is decoded by
Pillow as it is shown (its EXIF orientation applied; 16-bit grey scaled to 8 bits; grey, or
RGB when any image of the folder has colour; an alpha channel dropped), resized so that its
shorter side is `image_size` and centre-cropped to a square (torchvision's transforms). The
decoded uint8 tensor is cached in the data folder under a name made from the files' paths
and contents and `image_size`, so that a changed folder is read again and an unchanged one
is not decoded again.

Which split a file belongs to is a rule of the file itself (`file_draws`, a hash of its
path under `path`), so that adding or removing files moves no other file between splits.
"""

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from vaelab.errors import DataError

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg")


def image_files(path: Path) -> list[Path]:
    """The image files under `path`, sorted, less hidden ones (a file or folder whose name
    starts with a dot: the Finder's and Jupyter's files); a one-line DataError for a path
    that is not a folder or holds none."""
    if not path.exists():
        raise DataError(f"data.path={path} does not exist: give the folder of your images")
    if not path.is_dir():
        raise DataError(f"data.path={path} is a file, not a folder: give the folder that holds it")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.suffix.lower() in EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and p.is_file()
    )
    if not files:
        raise DataError(
            f"data.path={path} holds no {', '.join(EXTENSIONS)} images (searched every subfolder)"
        )
    return files


def classes_of(path: Path, files: list[Path]) -> tuple[list[str], Tensor | None]:
    """The class names and (N,) labels from the first subfolder of each file, or ([], None)
    when every file lies in `path` itself."""
    parts = [f.relative_to(path).parts for f in files]
    nested = [len(p) > 1 for p in parts]
    if not any(nested):
        return [], None
    if not all(nested):
        loose = files[nested.index(False)]
        raise DataError(
            f"data.path={path} mixes images in the folder itself ({loose.name}) with images in "
            "subfolders (the classes): move them into a subfolder, or all out of the subfolders"
        )
    names = sorted({p[0] for p in parts})
    index = {name: i for i, name in enumerate(names)}
    return names, torch.tensor([index[p[0]] for p in parts], dtype=torch.int64)


def content_key(path: Path, files: list[Path], image_size: int) -> str:
    """A short hash of the size and the files' paths (under `path`) and contents: the
    cache's name, which changes when a file is added, changed or removed. Contents, not
    sizes and times: `cp -p` and `rsync -a` rewrite a file keeping both (reading the bytes
    takes a small share of decoding them)."""
    digest = hashlib.blake2b(f"{image_size}\n".encode(), digest_size=16)
    for f in files:
        digest.update(f"{f.relative_to(path).as_posix()}\t".encode())
        digest.update(hashlib.blake2b(f.read_bytes(), digest_size=16).digest())
    return digest.hexdigest()[:16]


def file_draws(names: list[str], salt: str) -> Tensor:
    """(N,) float64 in [0, 1): a number of each file's name (its path under the folder) and
    `salt` alone, the same in every run and whatever other files there are, for rules that
    put each file in a split by itself (`held_out`)."""
    draws = [
        int.from_bytes(hashlib.blake2b(f"{salt}\n{name}".encode(), digest_size=8).digest())
        for name in names
    ]
    return torch.tensor(draws, dtype=torch.float64) / 2.0**64


def held_out(draws: Tensor, share: float) -> Tensor:
    """(N,) bool: the files whose draw is below `share`, a share of them near `share` in
    which each file's place depends on itself alone; in a folder so small that none or all
    fall below it, the one of the lowest draw is held out (or the one of the highest kept)."""
    chosen = draws < share
    if len(draws) >= 2 and not chosen.any():
        chosen[draws.argmin()] = True
    if len(draws) >= 2 and chosen.all():
        chosen[draws.argmax()] = False
    return chosen


# Pillow's modes without colour; every other mode (RGB, RGBA, P, CMYK, ...) is read as RGB.
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
# Pillow's modes of 16-bit grey PNGs, whose levels its convert("L") clips at 255.
_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L")


def _eight_bit(image: Image.Image) -> Image.Image:
    """The image in a mode of 8 bits a channel: 16-bit grey scaled (65535 to 255)."""
    if image.mode in _SIXTEEN_BIT:
        levels = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.round(levels / 257).clip(0, 255).astype(np.uint8), "L")
    return image.convert("L" if image.mode in _GREY_MODES else "RGB")


def _decode(file: Path, image_size: int, crop: int | None = None) -> Tensor:
    """The file's image (1 or 3, S, S) uint8, grey or RGB as stored, turned as its EXIF
    orientation says: its centre `crop` pixels square first if given, then resized
    (shorter side) and centre-cropped to S."""
    try:
        with Image.open(file) as image:
            image = _eight_bit(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's words for a bad file
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(
            f"{file} is not a readable image ({reason}): remove it from data.path, or replace it"
        ) from None
    pixels = F.pil_to_tensor(image)
    if crop is not None:
        pixels = F.center_crop(pixels, [crop, crop])
    pixels = F.resize(pixels, image_size, antialias=True)  # the shorter side
    return F.center_crop(pixels, [image_size, image_size])


def decode_cached(
    files: list[Path], root: Path, image_size: int, cache: Path, crop: int | None = None
) -> tuple[Tensor, bool]:
    """(images (N, C, S, S) uint8 of `files`, read from `cache`): from the cache when it is
    there, else decoded and cached (written to a temporary name, then renamed). Grey unless
    an image has colour. The bool: whether it came from the cache."""
    if cache.is_file():
        try:
            return torch.load(cache, weights_only=True)["images"], True
        except Exception as err:  # torch.load raises many kinds for a damaged file
            raise DataError(
                f"{cache} is not a readable image cache ({type(err).__name__}): delete it, and "
                "the next run decodes the images again"
            ) from None
    log.info("Decoding %d images of %s once, into %s", len(files), root, cache)
    decoded = [_decode(f, image_size, crop) for f in files]
    channels = 3 if any(len(image) == 3 for image in decoded) else 1  # grey unless colour
    images = torch.stack([image.expand(channels, -1, -1) for image in decoded])
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".images-", suffix=".partial")
    os.close(fd)
    try:
        torch.save({"images": images, "files": [str(f) for f in files]}, tmp)
        Path(tmp).replace(cache)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return images, False


def load_folder(
    path: Path, image_size: int, cache_dir: Path
) -> tuple[Tensor, Tensor | None, list[str], str, list[str]]:
    """(images (N, C, S, S) uint8, labels (N,) or None, class names, source, the files'
    paths under `path`) of the folder."""
    path = path.expanduser()  # a ~ the shell left in data.path=~/images
    files = image_files(path)
    names, labels = classes_of(path, files)
    cache = cache_dir / "Folder" / f"folder-{content_key(path, files, image_size)}.pt"
    images, cached = decode_cached(files, path, image_size, cache)
    source = f"cache:{cache}" if cached else f"folder:{path}"
    return images, labels, names, source, [f.relative_to(path).as_posix() for f in files]
