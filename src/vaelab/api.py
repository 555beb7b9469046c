"""Load a trained model from a run directory, without Hydra: `vae = vaelab.load_run(path)`."""

from pathlib import Path

import torch
from omegaconf import OmegaConf

from vaelab.checkpoints import verify
from vaelab.config import instantiate
from vaelab.datamodule import VAEDataModule
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

    Args:
        run_dir: a run directory written by `vaelab train`.
        overrides: entries that replace the run's `data.*` (e.g. data_dir); None keeps it.
    """
    data_cfg = Run(run_dir).config().get("data")
    if data_cfg is None:
        raise VaelabError(f"no config.yaml in {run_dir}: give a run directory of `vaelab train`")
    chosen = {key: value for key, value in overrides.items() if value is not None}
    return instantiate(OmegaConf.merge(data_cfg, chosen))
