"""A data source of one's own: images in a NumPy array file of the user's."""

from pathlib import Path

import numpy as np
import torch

from vaelab.data import DatasetSplits
from vaelab.data.sources import DataSource
from vaelab.errors import DataError


class ArrayFile(DataSource):
    """uint8 images from a `.npz` file with two arrays, of training and test images, (N, H, W)
    or (N, C, H, W), and optionally `<array>_labels` (N,) beside each (all 0 without).

    Args:
        path: the `.npz` file (`data.path`).
        keys: the names of its training and test arrays (`data.source_args.keys`, an
            argument of this source alone).
    """

    def __init__(self, path: str | None = None, keys: tuple[str, str] = ("train", "test")):
        self.path, self.keys = path, tuple(keys)

    def load(self, data_dir: Path, download: bool, allow_fallback: bool) -> DatasetSplits:
        if not self.path or not Path(self.path).expanduser().is_file():
            raise DataError(f"data.path={self.path} is not a file: give your .npz of images")
        with np.load(Path(self.path).expanduser()) as arrays:
            try:
                train, test = (arrays[key] for key in self.keys)
            except KeyError as err:
                saved = ", ".join(arrays.files)
                raise DataError(
                    f"{self.path} has no array {err} (it has {saved}): give its training and "
                    "test arrays' names in data.source_args.keys"
                ) from None
            labels = [arrays.get(f"{key}_labels") for key in self.keys]
        images = [torch.from_numpy(a if a.ndim == 4 else a[:, None]) for a in (train, test)]
        if any(x.dtype != torch.uint8 for x in images):
            raise DataError(f"{self.path} holds {train.dtype} images: save them as uint8 0..255")
        targets = [
            torch.zeros(len(x), dtype=torch.int64) if y is None else torch.from_numpy(y).long()
            for x, y in zip(images, labels, strict=True)
        ]
        return DatasetSplits(
            images[0], targets[0], images[1], targets[1], source=f"npz:{self.path}",
            labelled=labels[0] is not None,
        )  # fmt: skip
