"""`vaelab sample run_dir=outputs/runs/<run> n=64 seed=0`: a grid of draws from the prior."""

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from vaelab.config.schemas import check
from vaelab.errors import VaelabError
from vaelab.loading import load_run
from vaelab.plots import image_grid, save_png
from vaelab.runs import SAMPLES, find_checkpoint, run_dir_of

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    """Decode `n` draws z ~ p(z) (seeded by `seed`) into a PNG grid; returns its path."""
    if cfg.run_dir is None:
        raise VaelabError("give the run to sample from as run_dir=outputs/runs/<run>")
    check({"n": cfg.n}, command="sample")
    ckpt = find_checkpoint(cfg.run_dir, cfg.checkpoint)
    vae = load_run(ckpt)
    images = vae.sample(cfg.n, generator=torch.Generator().manual_seed(cfg.seed))
    out = save_png(image_grid(images, nrow=cfg.nrow), cfg.out or run_dir_of(ckpt) / SAMPLES)
    log.info("%d samples of %s written to %s", cfg.n, ckpt, out)
    return out
