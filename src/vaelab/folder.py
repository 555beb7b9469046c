"""`data=folder`: a folder of your own PNG and JPEG images, decoded once and cached.

Images are found under `path` at any depth. If they all lie in subfolders, the first
subfolder of each names its class (as torchvision's ImageFolder); if they all lie in `path`
itself, there are no labels. Each is decoded by Pillow (grey, or RGB when any image of the
folder has colour; an alpha channel is dropped), resized so that its shorter side is
`image_size` and centre-cropped to a square (torchvision's transforms). The decoded uint8
tensor is cached in the data folder under a name made from the file list (paths, sizes,
modification times) and `image_size`, so that a changed folder is read again and an
unchanged one is not decoded again.
"""

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from vaelab.errors import DataError

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg")


def image_files(path: Path) -> list[Path]:
    """The image files under `path`, sorted; a one-line DataError for a path that is not a
    folder or holds none."""
    if not path.exists():
        raise DataError(f"data.path={path} does not exist: give the folder of your images")
    if not path.is_dir():
        raise DataError(f"data.path={path} is a file, not a folder: give the folder that holds it")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
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
    """A short hash of the size and the files' paths (under `path`), sizes and times: the
    cache's name, which changes when a file is added, changed or removed."""
    digest = hashlib.sha256(f"{image_size}\n".encode())
    for f in files:
        stat = f.stat()
        digest.update(f"{f.relative_to(path)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# Pillow's modes without colour; every other mode (RGB, RGBA, P, CMYK, ...) is read as RGB.
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "F")


def _decode(file: Path, image_size: int, crop: int | None = None) -> Tensor:
    """The file's image (1 or 3, S, S) uint8, grey or RGB as stored: its centre `crop`
    pixels square first if given, then resized (shorter side) and centre-cropped to S."""
    try:
        with Image.open(file) as image:
            image = image.convert("L" if image.mode in _GREY_MODES else "RGB")
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
) -> tuple[Tensor, Tensor | None, list[str], str]:
    """(images (N, C, S, S) uint8, labels (N,) or None, class names, source) of the folder."""
    path = path.expanduser()  # a ~ the shell left in data.path=~/images
    files = image_files(path)
    names, labels = classes_of(path, files)
    cache = cache_dir / "Folder" / f"folder-{content_key(path, files, image_size)}.pt"
    images, cached = decode_cached(files, path, image_size, cache)
    return images, labels, names, f"cache:{cache}" if cached else f"folder:{path}"
