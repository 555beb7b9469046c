"""How batches of held uint8 splits are served: by index, sharded over DDP processes, from
a position a checkpoint stores (exact mid-epoch resume), and where the splits are held."""

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset

from vaelab.errors import DataError


class IndexBatchSampler(Sampler[Tensor]):
    """Yields batches of indices, each process of a DDP run getting its own shard.

    The (optionally shuffled) order is padded by repeating its start to a multiple of
    `num_replicas`, so every process gets the same number of batches, as DDP requires;
    process `rank` takes every `num_replicas`-th index. The last batch may be smaller.

    Args:
        n: Number of examples.
        batch_size: Indices per batch.
        shuffle: Draw a new order every epoch from a generator seeded with (seed, epoch).
        seed: Run seed; the same on every process so the shards stay disjoint.
        num_replicas: Number of processes.
        rank: Index of this process.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.shard_size = -(-n // num_replicas)
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches already done)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the order (Lightning calls it on `DataLoader.sampler`)."""
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Make the next iteration over `epoch` skip the batches a checkpoint already saw."""
        self._resume_at = (epoch, batches_done)

    def __len__(self) -> int:
        return -(-self.shard_size // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        if self.n == 0:
            return
        if self.shuffle:
            # SeedSequence mixes the pair into one 32-bit seed; simple arithmetic like
            # seed * 2**32 + epoch collides, as torch's CPU generator keeps only 32 bits.
            mixed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(mixed))
        else:
            order = torch.arange(self.n)
        total = self.shard_size * self.num_replicas
        order = order.repeat(-(-total // self.n))[:total]
        batches = order[self.rank :: self.num_replicas].split(self.batch_size)
        skip = 0
        if self._resume_at is not None and self._resume_at[0] == self.epoch:
            skip = self._resume_at[1]
        self._resume_at = None
        yield from batches[skip:]


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning stores in checkpoints, for exact mid-epoch resume.

    Lightning saves `state_dict()` of a loader that has one and hands it back to
    `load_state_dict` on resume; the position is the number of batches the training loop
    has processed in the epoch (the loop prefetches, so the sampler's own count is ahead).
    """

    def __init__(self, dataset: TensorDataset, sampler: IndexBatchSampler, progress: Callable):
        # A generator of its own: a DataLoader draws a seed for its workers from the global
        # RNG each time it is iterated, which a resumed run does before restoring the RNG
        # (Lightning starts the first epoch's iteration first), so that a run resumed from
        # an epoch's end would draw other binarizations and z than the uninterrupted one.
        super().__init__(
            dataset, sampler=sampler, batch_size=None, num_workers=0, generator=torch.Generator()
        )
        self._progress = progress

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.sampler.epoch, "batches_done": self._progress()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.resume_at(state["epoch"], state["batches_done"])


DEVICE_SHARE = 0.5  # data=...placement=auto: the share of a GPU's free memory the data may take


def hold_on(
    device: torch.device, nbytes: int, placement: str, free: int | None = None
) -> torch.device:
    """Where splits of `nbytes` are held for training on `device` (`data.placement`).

    "auto": on a CUDA device when they take at most `DEVICE_SHARE` of its free memory
    (`free`, read from the device when None), so that the model and its activations keep
    the rest; otherwise in host memory. A CPU (or another accelerator) holds them itself.
    "device": on the device, refused in one line when they cannot fit in its free memory.
    "host": in host memory.
    """
    if placement == "host" or device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        return device
    if free is None:
        free, _ = torch.cuda.mem_get_info(device)
    if placement == "device":
        if nbytes > free:
            raise DataError(
                f"data.placement=device: the splits take {nbytes / 2**30:.1f} GiB but {device} "
                f"has {free / 2**30:.1f} GiB free: use data.placement=auto or host"
            )
        return device
    return device if nbytes <= DEVICE_SHARE * free else torch.device("cpu")
