"""Load a trained model from a run directory, without Hydra: `vae = vaelab.load_run(path)`."""

from pathlib import Path

import torch
from omegaconf import OmegaConf

from vaelab.config import instantiate
from vaelab.datamodule import VAEDataModule
from vaelab.errors import VaelabError
from vaelab.lit_module import LitVAE
from vaelab.models.vae import VAE

CHECKPOINTS = ("best", "last")


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run directory or of a checkpoint file inside its checkpoints/."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def find_checkpoint(path: str | Path, checkpoint: str = "best") -> Path:
    """The checkpoint file named by `path`: a .ckpt file, or a run directory.

    Args:
        path: a checkpoint file, or a run directory written by `python train.py`.
        checkpoint: with a run directory, "best" (checkpoints/best-*.ckpt, the best val/elbo)
            or "last" (checkpoints/last.ckpt).

    Raises:
        VaelabError: the path, or the checkpoint in the run directory, does not exist.
    """
    path = Path(path)
    if checkpoint not in CHECKPOINTS:
        raise VaelabError(f"checkpoint={checkpoint!r} must be one of {', '.join(CHECKPOINTS)}")
    if not path.exists():
        raise VaelabError(
            f"{path} does not exist: give a run directory (outputs/runs/<run>) or a .ckpt file"
        )
    if path.is_file():
        if path.suffix != ".ckpt":
            raise VaelabError(f"{path} is not a .ckpt file: give a run directory or a checkpoint")
        return path
    ckpt_dir = path / "checkpoints"
    best = sorted(ckpt_dir.glob("best-*.ckpt"))
    last = [p for p in [ckpt_dir / "last.ckpt"] if p.is_file()]
    found, other = (best, last) if checkpoint == "best" else (last, best)
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(p.name for p in found)
        raise VaelabError(f"{ckpt_dir} holds several best checkpoints ({names}): give one")
    if other:
        other_name = "last" if checkpoint == "best" else "best"
        raise VaelabError(
            f"no {checkpoint} checkpoint in {ckpt_dir}: use checkpoint={other_name}, "
            "or give a .ckpt file"
        )
    raise VaelabError(
        f"no checkpoints in {ckpt_dir}: give a run directory of train.py or a .ckpt file"
    )


def load_run(
    path: str | Path, checkpoint: str = "best", map_location: str | torch.device = "cpu"
) -> VAE:
    """The trained VAE of a run, in eval mode: encode, decode, sample, log_likelihood, ...

    Args:
        path: a run directory (outputs/runs/<run>) or a checkpoint file.
        checkpoint: with a run directory, "best" (best val/elbo) or "last".
        map_location: device to load the weights onto.

    Raises:
        VaelabError: the run directory or checkpoint does not exist.
    """
    ckpt = find_checkpoint(path, checkpoint)
    return LitVAE.load_from_checkpoint(ckpt, map_location=map_location).vae.eval()


def run_datamodule(run_dir: str | Path, **overrides: object) -> VAEDataModule:
    """The datamodule a run was trained with, from its config.yaml.

    Args:
        run_dir: a run directory written by `python train.py`.
        overrides: entries that replace the run's `data.*` (e.g. data_dir); None keeps it.
    """
    data_cfg = OmegaConf.load(Path(run_dir) / "config.yaml").data
    chosen = {key: value for key, value in overrides.items() if value is not None}
    return instantiate(OmegaConf.merge(data_cfg, chosen))
