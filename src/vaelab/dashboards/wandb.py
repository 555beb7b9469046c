"""W&B: the offline policy, a resumed run's W&B run, pictures as media, the run's W&B id and
url in status.json, `vaelab eval` into the run's W&B run (online) or one of its own (offline),
and the compare column of urls."""

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor

from vaelab.config.schemas import MONITORS
from vaelab.dashboards.base import Dashboard
from vaelab.runs import Run, shown_paths

log = logging.getLogger(__name__)

# W&B writes its run file every 15 s by default: a killed run would lose up to 15 s of logs.
FLUSH_SECONDS = 1.0


def wandb_sweep_id() -> str | None:
    """The W&B sweep this process runs for, when started by `wandb agent`."""
    return os.environ.get("WANDB_SWEEP_ID")


def _offline_without_credentials(run_dir: Path) -> str | None:
    """ "offline" when WANDB_MODE chooses no mode and there are no W&B credentials (asked
    where no mode was chosen)."""
    if "WANDB_MODE" in os.environ:
        return None
    import wandb  # here: a second of every start, for the runs that log to W&B only

    if wandb.login(prompt=False, verify=False):
        return None
    log.warning(
        "W&B: no credentials (run `wandb login` to log online), so this run is logged "
        "offline under %s/wandb; upload it later with `wandb sync <that offline-run dir>`.",
        run_dir,
    )
    return "offline"


def _resumed_run(run: Run, mode: str | None) -> dict[str, Any]:
    """The W&B run a resumed run continues: the same id online; offline, a new one."""
    recorded = run.wandb()
    if not recorded.get("id"):
        return {}
    if (mode or recorded.get("mode")) == "offline":
        log.warning(
            "W&B: an offline run cannot be resumed (a sync of two offline folders of one id "
            "keeps only one), so this part is a new offline W&B run; the whole run is in %s",
            run.history_file,
        )
        return {}
    return {"id": recorded["id"], "resume": "allow"}


def describe(loggers: Sequence[Logger]) -> dict[str, Any] | None:
    """The W&B run of `loggers`: {"id", "mode", "project", "entity", "url"} (None without one)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            experiment = logger.experiment
            offline = experiment.offline
            return {
                "id": experiment.id,
                "mode": "offline" if offline else "online",
                "project": experiment.project,
                "entity": None if offline else experiment.entity,
                "url": None if offline else experiment.url,
            }
    return None


class WandbDashboard(Dashboard):
    """Lightning's WandbLogger; its run summarises the monitored bound by its best value.

    Without a `mode` and without W&B credentials the run is logged offline. A resumed run
    logs on into its W&B run online (the id status.json records); offline, into a new one.
    """

    logger_class = WandbLogger
    column = "wandb"

    def build(self, cfg: DictConfig, run: Run) -> Logger:
        mode = self.arguments.get("mode") or _offline_without_credentials(run.path)
        overrides: dict[str, Any] = {"mode": mode} if mode else {}
        if cfg.get("resume"):
            overrides.update(_resumed_run(run, mode or os.environ.get("WANDB_MODE")))
        import wandb

        overrides["settings"] = wandb.Settings(
            quiet=True, x_transaction_log_flush_interval=FLUSH_SECONDS
        )
        logger = self.instantiate(**overrides)
        # Dashboards compare runs by their best validation bound, not the last one.
        logger.experiment.define_metric(cfg.get("monitor") or MONITORS[0], summary="max")
        return logger

    def record(self, run: Run, logger: Logger) -> None:
        run.record_wandb(**describe([logger]))

    def log_picture(
        self, logger: Logger, key: str, picture: Tensor | Figure, path: Path, step: int
    ) -> None:
        # A file path: W&B copies the PNG itself into the run's media.
        logger.log_image(key=key, images=[str(path)], step=step)

    def finish(self, logger: Logger) -> None:
        import wandb

        wandb.finish()

    def attach(self, run: Run, evaluation: dict[str, Any], mode: str | None) -> Logger | None:
        """Online, the run's own W&B run (the id its run directory records), next to its
        training curves. Offline, W&B cannot resume a run (a sync of two offline folders of
        one id keeps only one), so each evaluation is an offline W&B run of its own:
        job_type "eval", named after the run, in the run's group (without one, a group
        named by the run's W&B id), with what it evaluates in its config."""
        recorded = run.wandb()
        if mode == "disabled":
            return None
        if not recorded.get("id"):
            log.warning("W&B: %s records no W&B run, so these metrics are not logged", run.path)
            return None
        arguments: dict[str, Any] = {"project": recorded.get("project"), "mode": mode}
        if mode is None:
            # Offline runs stay offline: the evaluation's run folder is synced with training's.
            mode = "offline" if recorded.get("mode") == "offline" else None
            mode = mode or _offline_without_credentials(run.path)
        if (mode or os.environ.get("WANDB_MODE")) != "offline":
            return self.instantiate(
                arguments, id=recorded["id"], resume="allow", save_dir=str(run.path), mode=mode
            )
        config = run.config()
        evaluated = {"wandb_id": recorded["id"], "run_dir": str(run.path), **evaluation}
        # wandb.init's `config` goes in the node: instantiate() has an argument so named.
        arguments["config"] = {"evaluated": evaluated}
        return self.instantiate(
            arguments,
            save_dir=str(run.path),
            mode=mode,
            job_type="eval",
            group=config.get("group") or recorded["id"],
            name=f"eval of {config.get('run_name') or run.name}",
        )

    @classmethod
    def locate(cls, runs: Sequence[Run]) -> str | None:
        """Each run's W&B url; runs without one by their directory ("offline: outputs/...")."""
        urls, local = [], {}
        for run in runs:
            recorded = run.wandb()
            if recorded.get("url"):
                urls.append(recorded["url"])
            else:
                mode = "offline" if recorded.get("mode") == "offline" else "no W&B"
                local.setdefault(mode, []).append(run.path)
        return " ".join([*urls, *(f"{mode}: {shown_paths(p)}" for mode, p in local.items())])
