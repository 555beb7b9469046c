"""Images per second of vaelab's batching vs the usual torchvision DataLoader.

    python benchmarks/data_loading.py [--epochs 3] [--batch-size 128]

Both read the same MNIST IDX files (the offline fallback is written out as IDX first when
no MNIST is in data/) and deliver binarized float batches (B, 1, 28, 28) on the CPU.

With a CUDA GPU it also times `data.placement`: the splits held on the GPU against held in
host memory with each batch pinned and copied asynchronously, through a Lightning Trainer
whose step only touches the batch (images/s of loading and transfer), and the GPU memory
each takes.
"""

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from vaelab.data.datamodule import VAEDataModule


def write_idx(images: torch.Tensor, labels: torch.Tensor, raw: Path, prefix: str) -> None:
    n = len(images)
    dims = (2051, n, 28, 28)
    header = b"".join(d.to_bytes(4, "big") for d in dims)
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.numpy().tobytes())
    header = (2049).to_bytes(4, "big") + n.to_bytes(4, "big")
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.byte().numpy().tobytes())


def images_per_second(loader, epochs: int, convert=lambda b: b) -> float:
    count, start = 0, time.perf_counter()
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            x, _ = convert(batch)
            count += len(x)
    return count / (time.perf_counter() - start)


class _Touch(L.LightningModule):
    """A step that only reads the batch: what is timed is getting batches to the device."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        x, _ = batch
        return self.w * x.mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def gpu_placements(data_dir: str, batch_size: int, epochs: int) -> None:
    """data.placement=device against host on the GPU: images/s and GPU memory."""
    for placement in ("device", "host"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        dm = VAEDataModule(data_dir=data_dir, batch_size=batch_size, placement=placement)
        trainer = L.Trainer(accelerator="gpu", devices=1, max_epochs=epochs, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0)  # fmt: skip
        model = _Touch()
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        images = epochs * dm.hparams.n_train
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        print(f"GPU, data.placement={placement:6s} (held on {dm.held_on}): "
              f"{images / seconds:12,.0f} images/s, {peak:8.1f} MiB of GPU memory")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ours = VAEDataModule(data_dir=args.data_dir, batch_size=args.batch_size, download=False)
        ours.prepare_data()
        ours.setup("fit")
        root = Path(args.data_dir)
        if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
            root = Path(tmp)  # the fallback's images, written as IDX for torchvision
            raw = root / "MNIST" / "raw"
            raw.mkdir(parents=True)
            for loader, prefix in (
                (ours.train_dataloader(), "train"),
                (ours.test_dataloader(), "t10k"),
            ):
                x, y = loader.dataset.tensors
                write_idx(x.squeeze(1), y, raw, prefix)
        binarize = transforms.Compose([transforms.ToTensor(), torch.bernoulli])
        theirs = DataLoader(
            datasets.MNIST(root, train=True, transform=binarize),
            batch_size=args.batch_size,
            shuffle=True,
        )
        n = len(theirs.dataset)
        ours_rate = images_per_second(
            ours.train_dataloader(), args.epochs, lambda b: ours.on_after_batch_transfer(b, 0)
        )
        theirs_rate = images_per_second(theirs, args.epochs)

    print(f"train images: vaelab {len(ours.train_dataloader().dataset)}, torchvision {n}")
    print(f"vaelab on-device index batching : {ours_rate:12,.0f} images/s")
    print(f"torchvision DataLoader (PIL)     : {theirs_rate:12,.0f} images/s")
    print(f"ratio                           : {ours_rate / theirs_rate:12.1f}x")
    if torch.cuda.is_available():
        gpu_placements(args.data_dir, args.batch_size, args.epochs)
    else:
        print("data.placement on a GPU: no CUDA GPU here, not timed")


if __name__ == "__main__":
    main()
