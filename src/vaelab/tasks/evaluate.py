"""`vaelab eval run_dir=outputs/runs/<run> n_importance=5000`: test a trained run again.

Rebuilds the test data from the run's config.yaml, tests the checkpoint with K importance
samples per image, adds the record to the run's eval_metrics.json (one per checkpoint, K
and number of test images) and logs the metrics to W&B: online into the run's own W&B run
(the id its run directory records), next to its training curves; offline into a W&B run of
its own. Into the training's TensorBoard and MLflow runs, if it had them, as
eval_k<K>/test/... (`dashboards.log_evaluation`).
"""

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from vaelab import dashboards
from vaelab.checkpoints import verify
from vaelab.config import instantiate, trainer_args
from vaelab.errors import VaelabError
from vaelab.lit_module import LitVAE
from vaelab.loading import run_datamodule
from vaelab.runs import DATA, Run, find_checkpoint, run_dir_of
from vaelab.tasks.train import tested_images

log = logging.getLogger(__name__)


def _checkpoint_and_run(cfg: DictConfig) -> tuple[Path, Run]:
    if (cfg.run_dir is None) == (cfg.ckpt_path is None):
        raise VaelabError(
            "give the run to evaluate as run_dir=outputs/runs/<run> or ckpt_path=<file.ckpt> "
            "(one of the two)"
        )
    ckpt = find_checkpoint(cfg.run_dir or cfg.ckpt_path, cfg.checkpoint)
    run = Run(run_dir_of(ckpt))
    if not run.config_file.is_file():
        raise VaelabError(
            f"no config.yaml in {run.path}: give a checkpoint inside a run directory of "
            "`vaelab train`"
        )
    return verify(ckpt), run


def _warn_on_other_data(run: Run, datamodule: L.LightningDataModule) -> None:
    """One line when the test split is not the one the run was tested on (its data.json):
    evaluating on other data is allowed, but its figures are not the run's."""
    recorded = run.data().get("test")
    now = datamodule.fingerprint()["test"]
    if recorded is not None and recorded != now:
        log.warning(
            "The test split (%d images) differs from the one %s was tested on (%d images, "
            "its %s): these figures are of other data than its training's test",
            now["images"],
            run.path,
            recorded["images"],
            DATA,
        )


def run(cfg: DictConfig) -> dict[str, float]:
    """Test a run's checkpoint; returns the test metrics, also added to eval_metrics.json."""
    ckpt, run_dir = _checkpoint_and_run(cfg)
    datamodule = run_datamodule(run_dir.path, **cfg.data)
    _warn_on_other_data(run_dir, datamodule)
    L.seed_everything(cfg.seed)
    model = LitVAE.load_from_checkpoint(ckpt, map_location="cpu", n_importance=cfg.n_importance)
    model.eval_seed = cfg.seed  # the test draws; training's test used LitVAE.eval_seed, 0
    trainer_cfg, own = trainer_args(cfg.trainer)
    if own["compile"]:
        model.compile_networks()
    evaluation: dict[str, Any] = {
        "n_importance": cfg.n_importance,
        "seed": cfg.seed,
        "ckpt_path": ckpt.relative_to(run_dir.path).as_posix(),
    }
    loggers = dashboards.attach(run_dir, cfg.wandb_mode, evaluation)
    trainer: L.Trainer = instantiate(
        trainer_cfg, L.Trainer, "trainer", logger=loggers or False, default_root_dir=run_dir.path
    )
    try:
        (results,) = trainer.test(model, datamodule=datamodule)
        wandb_run = dashboards.describe(loggers)
    finally:
        dashboards.finish(loggers)
    metrics = {key: float(value) for key, value in results.items()}
    logged_to = dashboards.log_evaluation(run_dir, metrics, cfg.n_importance)
    record: dict[str, Any] = {
        **metrics,
        **evaluation,
        "test_images": tested_images(trainer, datamodule),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wandb": wandb_run,
        "dashboards": logged_to,  # the training's TensorBoard and MLflow runs it went into
    }
    out = run_dir.add_evaluation(record)
    log.info("Metrics written to %s", out)
    return metrics
