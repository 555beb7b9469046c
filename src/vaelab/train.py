"""`python train.py ...`: compose the config, train, then validate and test the best checkpoint."""

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from vaelab.config import config_dir, instantiate, run_reporting_errors
from vaelab.errors import ConfigError
from vaelab.likelihoods import BINARY_LIKELIHOODS

log = logging.getLogger(__name__)


def wandb_overrides(cfg: DictConfig, logger_cfg: DictConfig) -> dict[str, Any]:
    """Run name and group from the command line; offline mode when there are no credentials."""
    overrides: dict[str, Any] = {}
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if logger_cfg.get("name") is None:
        overrides["name"] = (hydra_cfg and hydra_cfg.job.override_dirname) or "defaults"
    if logger_cfg.get("group") is None and hydra_cfg and hydra_cfg.mode == RunMode.MULTIRUN:
        overrides["group"] = Path(hydra_cfg.sweep.dir).name
    no_mode_chosen = logger_cfg.get("mode") is None and "WANDB_MODE" not in os.environ
    if no_mode_chosen and not wandb.login(prompt=False, verify=False):
        overrides["mode"] = "offline"
        log.warning(
            "W&B: no credentials (run `wandb login` to log online), so this run is logged "
            "offline under %s/wandb; upload it later with `wandb sync <that offline-run dir>`.",
            cfg.paths.output_dir,
        )
    return overrides


def build_loggers(cfg: DictConfig) -> list[Logger]:
    loggers = []
    for logger_cfg in (cfg.get("logger") or {}).values():
        is_wandb = logger_cfg.get("_target_", "").endswith("WandbLogger")
        overrides = wandb_overrides(cfg, logger_cfg) if is_wandb else {}
        loggers.append(instantiate(logger_cfg, **overrides))
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            # Dashboards compare runs by their best validation bound, not the last one.
            logger.experiment.define_metric("val/elbo", summary="max")
    return loggers


def _fit_and_test(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt_path: str | None,
) -> dict[str, float]:
    """Fit, then validate and test the best checkpoint (the last weights without one)."""
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
    eval_ckpt = "best" if best else None
    metrics = {}
    for results in (
        trainer.validate(model, datamodule=datamodule, ckpt_path=eval_ckpt),
        trainer.test(model, datamodule=datamodule, ckpt_path=eval_ckpt),
    ):
        metrics.update({k: float(v) for k, v in results[0].items()})
    return metrics


def run(cfg: DictConfig) -> dict[str, float]:
    """Train, validate and test one configuration; returns the final val and test metrics."""
    run_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, image_shape=datamodule.image_shape)
    if cfg.likelihood in BINARY_LIKELIHOODS and not datamodule.is_binary:
        raise ConfigError(
            f"likelihood={cfg.likelihood} needs binary pixels but data.binarize=none: "
            "use data.binarize=dynamic or static, or likelihood=continuous_bernoulli or gaussian"
        )
    loggers = build_loggers(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    try:
        metrics = _fit_and_test(trainer, model, datamodule, cfg.get("ckpt_path"))
    finally:
        # Close this job's W&B run, so that the next job of a multirun starts its own.
        if any(isinstance(logger, WandbLogger) for logger in loggers):
            wandb.finish()
    if trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        log.info("Run directory: %s", run_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_reporting_errors(run, cfg).get("val/elbo")
