"""Every W&B call: loggers, the offline policy, run names and groups, sweeps, finishing;
the CSV logger that keeps a resumed run's rows, and the MLflow store opened safely."""

import csv
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import (
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf, open_dict

from vaelab.config import instantiate
from vaelab.config.schemas import MONITORS
from vaelab.runs import Run, is_multirun_dir, locked, mlflow_parent_file, write_json

log = logging.getLogger(__name__)

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
# W&B writes its run file every 15 s by default: a killed run would lose up to 15 s of logs.
FLUSH_SECONDS = 1.0


def wandb_sweep_id() -> str | None:
    """The W&B sweep this process runs for, when started by `wandb agent`."""
    return os.environ.get("WANDB_SWEEP_ID")


def name_and_group(cfg: DictConfig, overrides: str | None, sweep_dir: str | None) -> None:
    """Fill `run_name` and `group` where the user left them null, in place.

    The run is named by its command-line overrides (e.g. "latent_dim=2,model=mlp"); the
    jobs of a multirun share the sweep directory's name as group, and the runs of a W&B
    sweep share the sweep's id. Written into the config, so config.yaml records them.
    """
    with open_dict(cfg):
        if cfg.get("run_name") is None:
            cfg.run_name = overrides or "defaults"
        if cfg.get("group") is None:
            sweep_id = wandb_sweep_id()
            if sweep_id:
                cfg.group = f"sweep-{sweep_id}"
            elif sweep_dir:
                cfg.group = Path(sweep_dir).name


def _offline_without_credentials(logger_cfg: DictConfig, run_dir: Path) -> str | None:
    """ "offline" when no mode was chosen and there are no W&B credentials."""
    if logger_cfg.get("mode") is not None or "WANDB_MODE" in os.environ:
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


def _is_wandb(logger_cfg: DictConfig) -> bool:
    return logger_cfg.get("_target_", "") == WANDB_LOGGER


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


class _KeptRows(ExperimentWriter):
    """Lightning's metrics.csv writer, which appends to the rows already in the file."""

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes metrics.csv here. Kept instead, its columns become the writer's,
        # so that a new column rewrites the file with all of them.
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])

    def drop_from(self, step: int) -> None:
        """Drop the rows of `step` and after."""
        self.metrics = [row for row in self.metrics if row["step"] < step]
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            rows = [row for row in csv.DictReader(f) if float(row["step"]) < step]
        tmp = f"{self.metrics_file_path}.{os.getpid()}.tmp"  # a kill keeps the file whole
        with self._fs.open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
        self._fs.mv(tmp, self.metrics_file_path)


class RunCSVLogger(CSVLogger):
    """Lightning's CSVLogger that keeps what it logged: a resumed run's metrics.csv keeps
    its rows up to the checkpoint it resumes from (`resume_at`, called by `RunHistory`)
    and goes on after them, where Lightning's deletes the file when a run starts again."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeptRows(log_dir=self.log_dir)
        return self._experiment

    def resume_at(self, global_step: int) -> None:
        """Drop the rows logged after the checkpoint of `global_step`, which the run resumed
        from it logs again. Lightning labels a step's row with the number of steps before
        it, and an epoch's end with its last step's label: these are the rows labelled
        `global_step` and later."""
        self.experiment.drop_from(global_step)


@contextmanager
def _logging_kept() -> Iterator[None]:
    """Python's logging as it was, after a block that reconfigures it: the first migration
    of a new MLflow store runs alembic's `logging.config.fileConfig`, which closes and
    replaces the root logger's handlers (Hydra's console and the run's train.log) and sets
    its level to WARN, so that vaelab's own lines vanished. Inside the block, lines below
    WARNING are dropped: alembic's, one per migration step, say nothing a user can act on."""
    root = logging.getLogger()
    handlers, level, disabled_below = root.handlers[:], root.level, root.manager.disable
    loggers = {
        name: (logger.level, logger.disabled)
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    logging.disable(logging.INFO)  # a threshold fileConfig leaves alone
    try:
        yield
    finally:
        logging.disable(disabled_below)
        root.handlers[:] = handlers
        root.setLevel(level)
        for handler in handlers:
            if isinstance(handler, logging.FileHandler) and handler.stream is None:
                handler.mode = "a"  # closed by fileConfig: its next line reopens it, appending
        for name, (logger_level, disabled) in loggers.items():
            logging.getLogger(name).setLevel(logger_level)
            logging.getLogger(name).disabled = disabled


def _open_mlflow_store(uri: str | None) -> None:
    """Create (or open) the MLflow store of `uri` before its logger does: a SQLite file's
    folder first, which SQLite does not create (MLflow then retried for 90 s and failed),
    and a new database's tables with logging kept as it is (`_logging_kept`)."""
    from mlflow.store.db.db_types import DATABASE_ENGINES

    if not uri or uri.split(":", 1)[0].split("+", 1)[0] not in DATABASE_ENGINES:
        return  # a server or a file store: nothing to migrate here
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    from mlflow.tracking import MlflowClient

    with _logging_kept():
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """The loggers of `cfg.logger`; W&B summarises the monitored bound by its best value."""
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        overrides: dict[str, Any] = {}
        if _is_wandb(logger_cfg):
            run = Run(cfg.paths.output_dir)
            mode = logger_cfg.get("mode") or _offline_without_credentials(logger_cfg, run.path)
            overrides = {"mode": mode} if mode else {}
            if cfg.get("resume"):
                overrides.update(_resumed_run(run, mode or os.environ.get("WANDB_MODE")))
            import wandb

            overrides["settings"] = wandb.Settings(
                quiet=True, x_transaction_log_flush_interval=FLUSH_SECONDS
            )
        elif _is_mlflow(logger_cfg):
            _open_mlflow_store(logger_cfg.get("tracking_uri"))
            overrides = _mlflow_run(cfg, logger_cfg)
        loggers.append(instantiate(logger_cfg, Logger, f"logger.{name}", **overrides))
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            # Dashboards compare runs by their best validation bound, not the last one.
            logger.experiment.define_metric(cfg.get("monitor") or MONITORS[0], summary="max")
    return loggers


def _is_mlflow(logger_cfg: DictConfig) -> bool:
    return "MLFlowLogger" in str(logger_cfg.get("_target_", ""))


def _mlflow_run(cfg: DictConfig, logger_cfg: DictConfig) -> dict[str, Any]:
    """The MLFlowLogger's run: the one this run directory recorded, when resumed; else a new
    run, tagged as the child of its sweep's parent run when it is a multirun's job (the
    parent made by the sweep's first job, under a lock, and named after the sweep)."""
    run_dir = Path(cfg.paths.output_dir)
    recorded = Run(run_dir).mlflow()
    if cfg.get("resume") and recorded:
        return {"run_id": recorded["run_id"]}
    sweep = run_dir.parent
    if not is_multirun_dir(sweep):
        return {}
    from mlflow.tracking import MlflowClient

    parent_file = mlflow_parent_file(sweep)
    with locked(parent_file):
        if parent_file.is_file():
            parent = json.loads(parent_file.read_text())["run_id"]
        else:
            client = MlflowClient(tracking_uri=logger_cfg.get("tracking_uri"))
            name = logger_cfg.experiment_name
            experiment = client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else client.create_experiment(name, logger_cfg.get("artifact_location"))
            )
            made = client.create_run(experiment_id, run_name=cfg.get("group") or sweep.name)
            parent = made.info.run_id
            client.set_tag(parent, "vaelab.sweep_dir", str(sweep))
            client.set_terminated(parent)  # a container of the jobs: nothing runs in it
            write_json(parent_file, {"run_id": parent})
    tags = dict(logger_cfg.get("tags") or {})
    return {"tags": {**tags, "mlflow.parentRunId": parent}}


def describe(loggers: list[Logger]) -> dict[str, Any] | None:
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


def record(run: Run, loggers: list[Logger]) -> None:
    """Write the W&B run's id, mode and url, and the MLflow run's id, into the run
    directory (global rank 0)."""
    wandb_run = describe(loggers)
    if wandb_run:
        run.record_wandb(**wandb_run)
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            run.record_mlflow(run_id=logger.run_id, tracking_uri=logger._tracking_uri)


def hyperparameter_loggers(loggers: list[Logger], resumed: bool) -> list[Logger]:
    """The loggers to give the run's config at its start: all, but for a resumed run not
    MLflow's, whose params were logged at the first start and which refuses a changed value
    (a resume's max_epochs); config.yaml records what the resume changed."""
    return [log for log in loggers if not (resumed and isinstance(log, MLFlowLogger))]


def log_final(loggers: list[Logger], cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """The run's hyperparameters with its final val and test figures, once, for the
    dashboards that compare runs by them: TensorBoard's HParams tab (global rank 0)."""
    final = {
        key: value
        for key, value in metrics.items()
        if isinstance(value, float) and key.startswith(("val/", "test/")) and "_dim/" not in key
    }
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True), final)
            logger.experiment.flush()


def finish(loggers: list[Logger]) -> None:
    """Close this job's W&B run, so that the next job of a multirun starts its own."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()


def attach(run: Run, mode: str | None, evaluation: dict[str, Any]) -> WandbLogger | None:
    """A logger for the metrics of `vaelab eval`, in the run's W&B project.

    Online, it continues the run's own W&B run (the id its run directory records), next
    to its training curves. Offline, W&B cannot resume a run (a sync of two offline folders
    of one id keeps only one), so each evaluation is an offline W&B run of its own:
    job_type "eval", named after the run, in the run's group (without one, a group named
    by the run's W&B id), with what it evaluates in its config.

    Args:
        run: the run directory.
        mode: online, offline or disabled; None: the mode the run was logged in.
        evaluation: what is evaluated (checkpoint, K, seed), for the offline run's config.
    """
    recorded = run.wandb()
    if mode == "disabled":
        return None
    config = run.config()
    if not recorded.get("id"):
        if (config.get("logger") or {}).get("wandb"):
            log.warning("W&B: %s records no W&B run, so these metrics are not logged", run.path)
        return None
    logger_cfg = OmegaConf.create(
        {"_target_": WANDB_LOGGER, "project": recorded.get("project"), "mode": mode}
    )
    if mode is None:
        # Offline runs stay offline: the evaluation's run folder is synced along with training's.
        mode = "offline" if recorded.get("mode") == "offline" else None
        mode = mode or _offline_without_credentials(logger_cfg, run.path)
    if (mode or os.environ.get("WANDB_MODE")) != "offline":
        return instantiate(
            logger_cfg,
            WandbLogger,
            "logger",
            id=recorded["id"],
            resume="allow",
            save_dir=str(run.path),
            mode=mode,
        )
    evaluated = {"wandb_id": recorded["id"], "run_dir": str(run.path), **evaluation}
    # wandb.init's `config` goes in the logger's config: instantiate() has an argument so named.
    logger_cfg.config = {"evaluated": evaluated}
    return instantiate(
        logger_cfg,
        WandbLogger,
        "logger",
        save_dir=str(run.path),
        mode=mode,
        job_type="eval",
        group=config.get("group") or recorded["id"],
        name=f"eval of {config.get('run_name') or run.name}",
    )


def evaluation_prefix(n_importance: int) -> str:
    """The name under which `vaelab eval` logs its test metrics into the training's
    TensorBoard and MLflow runs: eval_k5000/test/nll_iwae beside training's test/nll_iwae
    (K = n_importance of training), so that neither replaces the other."""
    return f"eval_k{n_importance}"


def log_evaluation(run: Run, metrics: dict[str, float], n_importance: int) -> list[str]:
    """Log `vaelab eval`'s test metrics into the TensorBoard and MLflow runs of the run's
    training (the loggers its config.yaml names), at the step training ended, as
    `eval_k<K>/<metric>`; returns the names of the loggers written to.

    TensorBoard: a new event file in the training's log folder, so that `tensorboard
    --logdir` shows the evaluation with the run. MLflow: the run its `mlflow.json`
    records, in its tracking store (a run without one, or whose store is gone, is said
    in one warning line and left alone)."""
    loggers_cfg = run.config().get("logger") or {}
    prefix = evaluation_prefix(n_importance)
    step = max([row.get("step", 0) for row in run.history()] or [0])
    named = {f"{prefix}/{key}": value for key, value in metrics.items()}
    written = []
    for name, logger_cfg in loggers_cfg.items():
        target = str((logger_cfg or {}).get("_target_", ""))
        if target.endswith("TensorBoardLogger"):
            logger = instantiate(OmegaConf.create(logger_cfg), TensorBoardLogger, f"logger.{name}")
            logger.log_metrics(named, step)
            logger.finalize("success")
            written.append(name)
        elif _is_mlflow(logger_cfg):
            mlflow_run = run.mlflow()
            if not mlflow_run:
                log.warning(
                    "MLflow: %s records no MLflow run, so these metrics are not logged", run.path
                )
                continue
            uri = mlflow_run["tracking_uri"]
            if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
                log.warning(
                    "MLflow: the store %s of %s is gone, so these metrics are not logged",
                    uri,
                    run.path,
                )
                continue
            logger = MLFlowLogger(
                experiment_name=logger_cfg.get("experiment_name") or "vaelab",
                tracking_uri=uri,
                run_id=mlflow_run["run_id"],
            )
            logger.log_metrics(named, step)
            logger.finalize("success")
            written.append(name)
    return written
