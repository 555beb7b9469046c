"""LightningDataModule: splits, binarization and on-device batching by index."""

import hashlib
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from vaelab.config.earlier import option_source
from vaelab.config.schemas import checked
from vaelab.data.batches import IndexBatchSampler, ResumableLoader, hold_on
from vaelab.data.sources import build_source
from vaelab.data.splits import DatasetSplits, file_draws, held_out
from vaelab.errors import DataError, VaelabError

SPLITS = ("train", "val", "test")
# Dynamic binarization draws val/test once with this seed, whatever the run seed, so val
# metrics are comparable across epochs and test metrics across runs.
_EVAL_BINARIZATION_SEED = 0
_FINGERPRINT_CHUNK = 4096  # images hashed at a time: no second copy of a large split


class VAEDataModule(LightningDataModule):
    """Images held as whole uint8 tensors on the training device.

    Batches are `(x, y)`: x (B, C, H, W) float32 in [0, 1], y (B,) int64 labels, or (B, K)
    int64 factor values for data with ground-truth factors (`factor_names`). The
    last training batch of an epoch may be smaller: no example is dropped. The dataloaders
    yield the stored uint8 images, which a Trainer converts on its device
    (`on_after_batch_transfer`); outside a Trainer, `model_batches` gives converted ones.

    Args:
        name: The data's label in logs and tables (its option's name); without `source_class`,
            the data option (conf/data/<name>.yaml) whose source reads the data.
        data_dir: Root of torchvision's layout (`data_dir/MNIST/raw/...`).
        batch_size: Training batch size per process.
        eval_batch_size: Validation and test batch size per process.
        binarize: "dynamic" (a fresh Bernoulli draw per training batch, val/test drawn
            once), "static" (every split drawn once from `seed`) or "none" (grey levels).
        val_fraction: Share of the standard training set held out for validation.
        val_size: Number of training images held out for validation instead (None:
            `val_fraction` decides), e.g. 10,000 for the usual 50,000/10,000 split.
        seed: Seeds the train/val split, static binarization and shuffling. Files of
            images (`data=folder`, `data=celeba`) are held out for validation by a rule of
            each file's path and the seed, so that adding a file moves no other one.
        download: Try torchvision's download if the files are not in `data_dir`.
        allow_fallback: Fall back to offline copies (MNIST, Fashion-MNIST).
        image_size: the source's pixels a side, where it takes one (shapes: None is 64;
            folder needs one).
        grid: `Shapes`: values per factor (`vaelab.data.shapes.ShapesGrid`'s fields).
        path: the source's file or folder, where it takes one (`Folder`: the folder of
            PNG and JPEG images).
        placement: where the splits are held (`hold_on`): "auto" (on the training device
            if they take at most half of its free memory, else in host memory), "device"
            or "host" (batches gathered there, pinned and copied asynchronously).
        source_class: the `vaelab.data.sources.DataSource` subclass that reads the data, a
            dotted name (a user's own: README "Your own parts, without forking"); None (runs
            made before it): `name`'s option's.
        source_args: the source class's own further arguments, by name (a user's source's:
            `data.source_args.<argument>`); each must be an argument of its constructor.
    """

    @checked("data.")
    def __init__(
        self,
        name: str = "mnist",
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 256,
        binarize: str = "dynamic",
        val_fraction: float = 0.1,
        val_size: int | None = None,
        seed: int = 0,
        download: bool = True,
        allow_fallback: bool = True,
        image_size: int | None = None,
        grid: dict[str, int] | None = None,
        path: str | None = None,
        placement: str = "auto",
        source_class: str | None = None,
        source_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        args = {"image_size": image_size, "grid": grid, "path": path}
        target = source_class or option_source(name)
        self.data_source = build_source(target, args, source_args or {})
        self._loaded: DatasetSplits | None = None
        self._splits: dict[str, TensorDataset] = {}
        self._factor_names: tuple[str, ...] = ()
        self._labelled = True
        self._fingerprint: dict[str, dict[str, object]] | None = None
        self._device = torch.device("cpu")  # the training device, which batches go to
        self.held_on = torch.device("cpu")  # where the splits are held (set up)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image, read from the data (loaded first if need be)."""
        return tuple(self._images().shape[1:])

    @property
    def labelled(self) -> bool:
        """Whether the labels mean something (False: a folder without class subfolders)."""
        if self._loaded is None and not self._splits:
            self._loaded = self._load()
        return self._labelled

    @property
    def factor_names(self) -> tuple[str, ...]:
        """The ground-truth factors the labels hold (data=shapes); empty for class labels."""
        if self._loaded is None and not self._splits:
            self._loaded = self._load()
        return self._factor_names

    @property
    def train_labels(self) -> Tensor:
        """The training set's labels (N,) or (N, K), read from the data (loaded first if
        need be): what a conditional model's label sizes are read from."""
        if self._splits:
            return self._splits["train"].tensors[1]
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded.train_labels

    def _images(self) -> Tensor:
        if self._splits:
            return self._splits["train"].tensors[0]
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded.train_images

    @property
    def is_binary(self) -> bool:
        """Whether batches hold only 0s and 1s (required by a Bernoulli likelihood)."""
        return self.hparams.binarize != "none"

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node before `setup`, so a download or
        # extraction into data_dir happens once instead of racing across DDP ranks.
        if not self._splits and self._loaded is None:
            self._loaded = self._load()

    def fingerprint(self) -> dict[str, dict[str, object]]:
        """The splits' identity, for a run to record the data it trained on: per split
        ("train", "val", "test") its number of images and a blake2b hash of its images
        and labels as split, before any binarization. Loads and splits the data first if
        need be."""
        if self._fingerprint is None:
            if self._loaded is None:
                self._loaded = self._load()
            self._fingerprint = _fingerprint(self._loaded, *self._val_split(self._loaded))
        return self._fingerprint

    def setup(self, stage: str | None = None) -> None:
        if self._splits:  # already set up, e.g. for fit before test
            return
        data = self._loaded if self._loaded is not None else self._load()
        self._loaded = None
        hp = self.hparams
        train_idx, val_idx = self._val_split(data)
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(data, train_idx, val_idx)
        pool, test = data.train_images, data.test_images
        if hp.binarize == "static":
            pool, test = _binarize(pool, hp.seed), _binarize(test, hp.seed)
        val = pool[val_idx]
        if hp.binarize == "dynamic":
            val = _binarize(val, _EVAL_BINARIZATION_SEED)
            test = _binarize(test, _EVAL_BINARIZATION_SEED)
        self._device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        splits = {
            "train": (pool[train_idx], data.train_labels[train_idx]),
            "val": (val, data.train_labels[val_idx]),
            "test": (test, data.test_labels),
        }
        nbytes = sum(x.nbytes + y.nbytes for x, y in splits.values())
        self.held_on = hold_on(self._device, nbytes, hp.placement)
        self._splits = {
            k: TensorDataset(x.to(self.held_on), y.to(self.held_on)) for k, (x, y) in splits.items()
        }
        # Lightning logs `hparams_initial`, which only save_hyperparameters refreshes.
        self.save_hyperparameters(
            {
                "source": data.source,
                "n_train": len(train_idx),
                "n_val": len(val_idx),
                "n_test": len(test),
            }
        )

    def _val_split(self, data: DatasetSplits) -> tuple[Tensor, Tensor]:
        """(train, val) indices into the training pool: a permutation drawn from the seed,
        or, for files of images, each file held out by a rule of its own path and the seed
        (`data.val_size`: the files of the lowest draws)."""
        hp = self.hparams
        n_val = _validation_size(hp.val_fraction, hp.val_size, len(data.train_images))
        if not data.train_names:
            perm = torch.randperm(
                len(data.train_images), generator=torch.Generator().manual_seed(hp.seed)
            )
            return perm[n_val:], perm[:n_val]
        draws = file_draws(list(data.train_names), f"val-{hp.seed}")
        if hp.val_size is not None:
            val = torch.zeros(len(draws), dtype=torch.bool)
            val[draws.argsort()[:n_val]] = True
        else:
            val = held_out(draws, hp.val_fraction)
        val_idx = val.nonzero().squeeze(1)
        return (~val).nonzero().squeeze(1), val_idx[draws[val_idx].argsort()]

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", self.hparams.batch_size, shuffle=True)
        return ResumableLoader(
            loader.dataset,
            loader.sampler,
            lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.processed,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size, shuffle=False)

    def transfer_batch_to_device(
        self, batch: tuple[Tensor, Tensor], device: torch.device, dataloader_idx: int
    ) -> tuple[Tensor, Tensor]:
        # Held on the training device, a batch is already where it goes: Lightning's walk of
        # it (`apply_to_collection`) would cost tens of µs of every step for nothing. From
        # host memory (data.placement=host, a batch per DDP process's device) Lightning moves it.
        images, labels = batch
        if images.device == device and labels.device == device:
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(
        self, batch: tuple[Tensor, Tensor], dataloader_idx: int
    ) -> tuple[Tensor, Tensor]:
        images, labels = batch
        x = images.float() / 255
        if self.hparams.binarize == "dynamic":
            # A Bernoulli(x) draw: P(u < x) = x for u ~ U[0, 1). Val/test were binarized in
            # setup and stored as 0/255, which this maps to themselves, so one rule serves
            # every split. (torch.bernoulli takes 1.3 ms for a batch of 128 on a CPU, this
            # 0.4 ms.)
            x = (torch.rand_like(x) < x).float()
        return x, labels

    def model_batches(self, split: str = "test") -> DataLoader:
        """The batches (x, y) of a split as a model sees them, for use outside a Trainer.

        x is (B, C, H, W) float32 in [0, 1], binarized as in training (val and test the
        same every time; train redrawn with the global RNG if `binarize=dynamic`), y (B,)
        int64 labels; in the stored order, `eval_batch_size` images a batch (`batch_size`
        for train), on the CPU unless a Trainer set the data up. Loads and splits the data
        first if needed. A DataLoader: it can be iterated again, and has a length.

        Args:
            split: "train", "val" or "test".
        """
        if split not in SPLITS:
            raise VaelabError(f"no split {split!r}: choose one of {', '.join(SPLITS)}")
        self.setup()
        hp = self.hparams
        batch_size = hp.batch_size if split == "train" else hp.eval_batch_size
        # The conversion a Trainer does after moving a batch to its device.
        convert = partial(self.on_after_batch_transfer, dataloader_idx=0)
        return self._loader(split, batch_size, shuffle=False, collate_fn=convert)

    def test_images(self, n: int) -> tuple[Tensor, Tensor]:
        """The first `n` test images, converted as evaluation batches are.

        Returns:
            x (n, C, H, W) float32 in [0, 1] and y (n,) or (n, K) int64 labels.
        """
        images, labels = self._splits["test"].tensors
        batch = (images[:n].to(self._device), labels[:n].to(self._device))
        return self.on_after_batch_transfer(batch, 0)

    def _load(self) -> DatasetSplits:
        hp = self.hparams
        data = self.data_source.splits(hp.data_dir, hp.download, hp.allow_fallback)
        self._factor_names, self._labelled = data.factor_names, data.labelled
        return data

    def _loader(
        self, split: str, batch_size: int, shuffle: bool, collate_fn: Callable | None = None
    ) -> DataLoader:
        dataset = self._splits[split]
        # Under DDP, padding repeats a few examples so all ranks get equal batch counts;
        # in val/test this slightly reweights those examples, which we accept.
        replicas, rank = (
            (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        )
        sampler = IndexBatchSampler(
            len(dataset), batch_size, shuffle, self.hparams.seed, replicas, rank
        )
        # batch_size=None: each sampler item is a whole batch of indices, gathered from the
        # on-device tensors in one indexing op instead of collating single items (collate_fn
        # then gets the whole batch).
        # Held in host memory for a GPU: each gathered batch is copied into pinned memory,
        # from which the Trainer's transfer to the device is asynchronous.
        pinned = self.held_on.type == "cpu" and self._device.type == "cuda"
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=0,
            collate_fn=collate_fn,
            pin_memory=pinned,
        )


def _validation_size(val_fraction: float, val_size: int | None, n: int) -> int:
    """How many of the `n` training images validation holds out: `val_size`, else the
    `val_fraction` of them; at least one, and at least one left to train on."""
    if val_size is not None:
        if val_size >= n:
            raise DataError(
                f"data.val_size={val_size} leaves no training image of the {n}: give fewer "
                f"than {n}, or data.val_size=null to use data.val_fraction"
            )
        return val_size
    n_val = round(val_fraction * n)
    if n_val == 0:
        raise DataError(
            f"data.val_fraction={val_fraction} holds out no image of the {n} "
            f"training images: give at least {1 / n:.2g}"
        )
    return n_val


def _fingerprint(
    data: DatasetSplits, train_idx: Tensor, val_idx: Tensor
) -> dict[str, dict[str, object]]:
    """Per split, {"images": how many, "blake2b": the hash of their shape, pixels and labels}."""
    all_test = torch.arange(len(data.test_images))
    parts = {
        "train": (data.train_images, data.train_labels, train_idx),
        "val": (data.train_images, data.train_labels, val_idx),
        "test": (data.test_images, data.test_labels, all_test),
    }
    found: dict[str, dict[str, object]] = {}
    for split, (images, labels, idx) in parts.items():
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{tuple(images.shape[1:])} {images.dtype} {labels.dtype}\n".encode())
        for chunk in idx.split(_FINGERPRINT_CHUNK):
            digest.update(images[chunk].numpy())
            digest.update(labels[chunk].numpy())
        found[split] = {"images": len(idx), "blake2b": digest.hexdigest()}
    return found


def _binarize(images: Tensor, seed: int) -> Tensor:
    """One Bernoulli draw per pixel with p = intensity, stored as uint8 0/255."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(images / 255, generator=generator).to(torch.uint8) * 255
