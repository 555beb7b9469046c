"""Image files decoded to uint8 tensors (Pillow, torchvision's resize and crop) and the
decoded set cached under a name made from the files' paths and contents (`data=folder`,
`data=celeba`)."""

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
