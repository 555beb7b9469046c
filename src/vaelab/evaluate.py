"""`python eval.py run_dir=outputs/runs/<run> n_importance=5000`: test a trained run again.

Rebuilds the test data from the run's config.yaml, tests the checkpoint with K importance
samples per image, writes <run_dir>/eval_metrics.json and logs the metrics to the run's own
W&B run (same id), so that they appear next to its training curves.
"""

import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import wandb
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from vaelab.api import find_checkpoint, run_datamodule, run_dir_of
from vaelab.config import config_dir, instantiate, run_reporting_errors
from vaelab.errors import VaelabError
from vaelab.lit_module import LitVAE
from vaelab.train import wandb_overrides

log = logging.getLogger(__name__)

# W&B's run folders: wandb/run-<date>_<time>-<id> (online) or wandb/offline-run-...-<id>.
_WANDB_RUN_FOLDER = re.compile(r"(offline-)?run-(\d{8}_\d{6})-(\w+)")


def wandb_run_of(run_dir: Path) -> tuple[str, bool] | None:
    """(run id, logged offline) of the W&B run of training under run_dir/wandb, if any.

    Each evaluation adds a folder with the same id; the earliest folder is training's.
    """
    folders = []
    for path in (run_dir / "wandb").glob("*run-*"):
        match = _WANDB_RUN_FOLDER.fullmatch(path.name)
        if match and path.is_dir():
            offline, started, run_id = match.groups()
            folders.append((started, run_id, offline is not None))
    if not folders:
        return None
    _, run_id, offline = min(folders)
    return run_id, offline


def _wandb_logger(cfg: DictConfig, run_cfg: DictConfig, run_dir: Path) -> WandbLogger | None:
    """A logger that resumes the run's W&B run, in the mode training used."""
    if cfg.wandb_mode == "disabled":
        return None
    logger_cfg = (run_cfg.get("logger") or {}).get("wandb")
    found = wandb_run_of(run_dir)
    if found is None:
        if logger_cfg is not None:
            log.warning("W&B: no run folder in %s/wandb, so these metrics are not logged", run_dir)
        return None
    run_id, offline = found
    if logger_cfg is None:  # e.g. a run of another logger config that also wrote wandb/
        logger_cfg = OmegaConf.create(
            {"_target_": "lightning.pytorch.loggers.WandbLogger", "project": run_cfg.get("project")}
        )
    # Offline runs stay offline: the evaluation's run folder is synced along with training's.
    mode = cfg.wandb_mode or ("offline" if offline else None)
    if mode is None:  # as in training: offline when there are no credentials
        mode = wandb_overrides(run_cfg, OmegaConf.merge(logger_cfg, {"mode": None})).get("mode")
    return instantiate(logger_cfg, id=run_id, resume="allow", save_dir=str(run_dir), mode=mode)


def _checkpoint_and_run_dir(cfg: DictConfig) -> tuple[Path, Path]:
    if (cfg.run_dir is None) == (cfg.ckpt_path is None):
        raise VaelabError(
            "give the run to evaluate as run_dir=outputs/runs/<run> or ckpt_path=<file.ckpt> "
            "(one of the two)"
        )
    ckpt = find_checkpoint(cfg.run_dir or cfg.ckpt_path, cfg.checkpoint)
    run_dir = run_dir_of(ckpt)
    if not (run_dir / "config.yaml").is_file():
        raise VaelabError(
            f"no config.yaml in {run_dir}: give a checkpoint inside a run directory of train.py"
        )
    return ckpt, run_dir


def run(cfg: DictConfig) -> dict[str, float]:
    """Test a run's checkpoint; returns the test metrics, also written to eval_metrics.json."""
    ckpt, run_dir = _checkpoint_and_run_dir(cfg)
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    OmegaConf.update(run_cfg, "paths.output_dir", str(run_dir))  # the run may have moved
    datamodule = run_datamodule(run_dir, **cfg.data)
    L.seed_everything(cfg.seed)
    model = LitVAE.load_from_checkpoint(ckpt, map_location="cpu", n_importance=cfg.n_importance)
    logger = _wandb_logger(cfg, run_cfg, run_dir)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger or False, default_root_dir=run_dir)
    try:
        (results,) = trainer.test(model, datamodule=datamodule)
    finally:
        if logger is not None:
            wandb.finish()
    metrics = {key: float(value) for key, value in results.items()}
    record: dict[str, Any] = {
        **metrics,
        "n_importance": cfg.n_importance,
        "seed": cfg.seed,
        "ckpt_path": ckpt.relative_to(run_dir).as_posix(),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = run_dir / "eval_metrics.json"
    out.write_text(json.dumps(record, indent=2, sort_keys=True))
    log.info("Metrics written to %s", out)
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def main(cfg: DictConfig) -> None:
    run_reporting_errors(run, cfg)
