"""`vaelab train ...`: train one configuration, then validate and test its best checkpoint."""

import logging
import math

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vaelab import tracking
from vaelab.callbacks import RunHistory
from vaelab.config import instantiate
from vaelab.errors import ConfigError, TrainingError, one_line
from vaelab.likelihoods import BINARY_LIKELIHOODS
from vaelab.lit_module import LitVAE
from vaelab.runs import Run

log = logging.getLogger(__name__)

# The training recipe: top-level knobs, read here only (the `model` group is the architecture).
RECIPE = (
    "latent_dim",
    "likelihood",
    "obs_scale",
    "beta",
    "num_samples",
    "kl_warmup_epochs",
    "lr",
    "n_importance",
)


def build_module(cfg: DictConfig, image_shape: tuple[int, int, int]) -> LitVAE:
    """The LitVAE of `cfg`: architecture from `cfg.model`, recipe from the top level."""
    recipe = {key: cfg[key] for key in RECIPE}
    return LitVAE(**cfg.model, **recipe, image_shape=image_shape)


def _fit_and_test(
    trainer: L.Trainer, model: LitVAE, datamodule: L.LightningDataModule, ckpt_path: str | None
) -> dict[str, float]:
    """Fit, then validate and test the best checkpoint (the last weights without one)."""
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    elbo = float(trainer.callback_metrics.get("val/elbo", math.nan))
    if not math.isfinite(elbo):
        raise TrainingError(
            f"val/elbo is {elbo} after epoch {trainer.current_epoch}: training diverged; "
            "lower lr or set trainer.gradient_clip_val"
        )
    best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
    eval_ckpt = "best" if best else None
    metrics = {}
    for results in (
        trainer.validate(model, datamodule=datamodule, ckpt_path=eval_ckpt),
        trainer.test(model, datamodule=datamodule, ckpt_path=eval_ckpt),
    ):
        metrics.update({k: float(v) for k, v in results[0].items()})
    return metrics


def _train(cfg: DictConfig, run: Run) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = build_module(cfg, datamodule.image_shape)
    if cfg.likelihood in BINARY_LIKELIHOODS and not datamodule.is_binary:
        raise ConfigError(
            f"likelihood={cfg.likelihood} needs binary pixels but data.binarize=none: "
            "use data.binarize=dynamic or static, or likelihood=continuous_bernoulli or gaussian"
        )
    loggers = tracking.build_loggers(cfg)
    try:
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
        trainer: L.Trainer = instantiate(
            cfg.trainer, logger=loggers or False, callbacks=[*callbacks, RunHistory()]
        )
        if trainer.is_global_zero:
            tracking.record(run, loggers)
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        return _fit_and_test(trainer, model, datamodule, cfg.get("ckpt_path"))
    finally:
        tracking.finish(loggers)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train, validate and test one configuration; returns the final val and test metrics.

    The run directory (`cfg.paths.output_dir`) records the status: running, then
    finished with metrics.json, or failed with the error.

    Raises:
        VaelabError: a bad configuration or input, or training diverged.
    """
    run_dir = Run(cfg.paths.output_dir)
    writes = rank_zero_only.rank == 0  # DDP: only the first process writes the run directory
    if writes:
        run_dir.start(OmegaConf.to_container(cfg, resolve=True))
    try:
        metrics = _train(cfg, run_dir)
    except BaseException as e:
        if writes:
            run_dir.fail(one_line(e))
        raise
    if writes:
        run_dir.finish(metrics)
        log.info("Run directory: %s", run_dir.path)
    return metrics
