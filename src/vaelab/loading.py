"""A trained run without Hydra: its model and its data (what `vaelab.api` offers users and
the eval and sample tasks use).

    vae = vaelab.load_run(run_dir)
    for x, y in vaelab.model_batches(run_dir, "test"):  # float32, binarized as in training
        log_px, ess = vaelab.estimators.iw_log_likelihood(vae, x, 5000)

The VAE's methods and the estimators check that x is such a batch (`VAE.check_data`):
the raw uint8 images of the datamodule's dataloaders are refused with a clear error.
"""

from pathlib import Path

import torch
from lightning import LightningDataModule
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from vaelab.checkpoints import verify
from vaelab.config import instantiate
from vaelab.data.datamodule import VAEDataModule
from vaelab.errors import VaelabError
from vaelab.lit_module import LitVAE
from vaelab.models.vae import VAE
from vaelab.runs import Run, find_checkpoint


def load_run(
    path: str | Path, checkpoint: str = "best", map_location: str | torch.device = "cpu"
) -> VAE:
    """The trained VAE of a run, in eval mode: encode, decode, sample, ...

    Args:
        path: a run directory (outputs/runs/<run>) or a checkpoint file.
        checkpoint: with a run directory, "best" (best val/elbo) or "last".
        map_location: device to load the weights onto.

    Raises:
        VaelabError: the run directory or checkpoint does not exist.
    """
    ckpt = verify(find_checkpoint(path, checkpoint))
    return LitVAE.load_from_checkpoint(ckpt, map_location=map_location).vae.eval()


def run_datamodule(run_dir: str | Path, **overrides: object) -> VAEDataModule:
    """The datamodule a run was trained with, from its config.yaml.

    Its dataloaders yield the stored uint8 images, for a Trainer to convert; its
    `model_batches(split)` (or `model_batches` here) gives the batches a model takes.

    Args:
        run_dir: a run directory written by `vaelab train`.
        overrides: entries that replace the run's `data.*` (e.g. data_dir); None keeps it.
    """
    data_cfg = Run(run_dir).config().get("data")
    if data_cfg is None:
        raise VaelabError(f"no config.yaml in {run_dir}: give a run directory of `vaelab train`")
    chosen = {key: value for key, value in overrides.items() if value is not None}
    return instantiate(OmegaConf.merge(data_cfg, chosen), LightningDataModule, "data")


def model_batches(run_dir: str | Path, split: str = "test", **overrides: object) -> DataLoader:
    """A split of a run's data as its model sees them: (x, y) batches, x (B, 1, 28, 28)
    float32 in [0, 1], binarized as the run was, y (B,) int64 labels, on the CPU.

    Args:
        run_dir: a run directory written by `vaelab train`.
        split: "train", "val" or "test" (val and test are the same images every time).
        overrides: entries that replace the run's `data.*`, e.g. eval_batch_size=64.

    Raises:
        VaelabError: no config.yaml in run_dir, an unknown split, or data not found.
    """
    return run_datamodule(run_dir, **overrides).model_batches(split)
