"""The splits of a data set (`DatasetSplits`) and the fixed rules that make a test split for
sets without one of their own: a file's own path (`file_draws`, `held_out`) for files of
images, a fixed draw for generated sets."""

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

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
            (`held_out`); empty for sets that are not files of images.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str
    factor_names: tuple[str, ...] = ()
    labelled: bool = True
    train_names: tuple[str, ...] = ()


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


def files_split(
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


def held_out_splits(
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
