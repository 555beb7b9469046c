"""`data=dsprites`: DeepMind's dSprites npz, its five factors as labels."""

import zipfile
from pathlib import Path

import numpy as np
import torch

from vaelab.data.downloads import fetch, one_line_reason
from vaelab.data.shapes import FACTORS
from vaelab.data.splits import DatasetSplits, held_out_splits
from vaelab.errors import DataError

# DeepMind's dSprites (Matthey et al. 2017): 737,280 binary 64 x 64 images, every combination
# of colour (one value), shape, scale, orientation, x and y; its latents_classes, less colour,
# are the factors.
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_URL = f"https://github.com/google-deepmind/dsprites-dataset/raw/master/{DSPRITES_FILE}"


def load_dsprites(root: Path, download: bool) -> DatasetSplits:
    """data=dsprites: DeepMind's npz in `root/dsprites/`, downloaded there first if asked."""
    path = root / "dsprites" / DSPRITES_FILE
    if not path.is_file():
        if not download:
            raise DataError(
                f"dSprites not found: {path} is missing; put DeepMind's {DSPRITES_FILE} "
                "there, or run online with data.download=true"
            )
        fetch(DSPRITES_URL, path)
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
    return held_out_splits(pixels, factors, f"npz:{path}", FACTORS)
