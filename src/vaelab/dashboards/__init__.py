"""The loggers of a run ("dashboards"), each through its adapter (`base.Dashboard`): built
from `cfg.logger`, recorded in the run directory, given the run's config, pictures and
final metrics, closed; `vaelab eval`'s metrics logged into the training's runs; and where
runs are in each, for `vaelab compare`. The only code that tells one logger from another:

- base.py          the adapter's interface, the default adapter (a logger of a user's: only
                   built) and the one lookup from a `_target_` or a logger to its adapter
- wandb.py         W&B: offline policy, resume, media, status.json, eval runs, url column
- tensorboard.py   TensorBoard: Images and HParams tabs, eval event files, folder column
- mlflow.py        MLflow: the store, a sweep's parent run, artifacts, mlflow.json, id column
- csv.py           RunCSVLogger: metrics.csv, whose rows a resumed run keeps
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

# isort: off
# Imported for their adapters, which register themselves in this order: compare's columns.
from vaelab.dashboards import wandb, tensorboard, mlflow, csv  # noqa: F401

# isort: on
from vaelab.dashboards.base import Dashboard, adapter_class, adapters, registered, run_adapters
from vaelab.dashboards.csv import RunCSVLogger
from vaelab.dashboards.wandb import describe, wandb_sweep_id
from vaelab.runs import Run

__all__ = [
    "Dashboard",
    "RunCSVLogger",
    "attach",
    "build",
    "columns",
    "describe",
    "evaluation_prefix",
    "finish",
    "links",
    "log_config",
    "log_evaluation",
    "log_final",
    "log_picture",
    "name_and_group",
    "record",
    "resumed",
]


def _of(logger: Logger) -> Dashboard:
    """The adapter of a built logger (one the Trainer was given, not built from a node)."""
    return adapter_class(type(logger))("", {}, type(logger))


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


def build(cfg: DictConfig) -> list[Logger]:
    """The loggers of `cfg.logger`, each built by its adapter; a failed one closes those
    already built."""
    run = Run(cfg.paths.output_dir)
    loggers: list[Logger] = []
    try:
        for board in adapters(cfg.get("logger")):
            loggers.append(board.build(cfg, run))
    except BaseException:
        finish(loggers)
        raise
    return loggers


def record(run: Run, loggers: Sequence[Logger]) -> None:
    """Write into the run directory what finds each logger's run again (global rank 0):
    the W&B run's id, mode and url in status.json, the MLflow run's id in mlflow.json."""
    for logger in loggers:
        _of(logger).record(run, logger)


def log_config(loggers: Sequence[Logger], cfg: DictConfig, resumed: bool) -> None:
    """Give the loggers the run's resolved config at its start (MLflow's not on a resume)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        _of(logger).log_config(logger, config, resumed)


def log_final(loggers: Sequence[Logger], cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """The run's config with its final val and test figures, once, for the dashboards that
    compare runs by them: TensorBoard's HParams tab (global rank 0)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        _of(logger).log_final(logger, config, metrics)


def resumed(loggers: Sequence[Logger], global_step: int) -> None:
    """The run resumed from the checkpoint of `global_step`: the CSV drops its later rows."""
    for logger in loggers:
        _of(logger).resumed(logger, global_step)


def log_picture(
    loggers: Sequence[Logger], key: str, picture: Tensor | Figure, path: Path, step: int
) -> None:
    """Log a picture saved as `path` to every logger that takes pictures: W&B and TensorBoard
    as `key` (`{val,test}/pictures/<name>`), MLflow as an artifact beside the run's file."""
    for logger in loggers:
        _of(logger).log_picture(logger, key, picture, path, step)


def finish(loggers: Sequence[Logger]) -> None:
    """Close this job's loggers' runs, so that the next job of a multirun starts its own."""
    for logger in loggers:
        _of(logger).finish(logger)


def attach(run: Run, mode: str | None, evaluation: dict[str, Any]) -> list[Logger]:
    """The loggers `vaelab eval` tests `run` with: the W&B run of its training (online) or
    one of its own (offline), when it logged to W&B.

    Args:
        run: the run directory.
        mode: online, offline or disabled; None: the mode the run was logged in.
        evaluation: what is evaluated (checkpoint, K, seed), for an offline run's config.
    """
    attached = (board.attach(run, evaluation, mode) for board in run_adapters(run))
    return [logger for logger in attached if logger is not None]


def evaluation_prefix(n_importance: int) -> str:
    """The name under which `vaelab eval` logs its test metrics into the training's
    TensorBoard and MLflow runs: eval_k5000/test/nll_iwae beside training's test/nll_iwae
    (K = n_importance of training), so that neither replaces the other."""
    return f"eval_k{n_importance}"


def log_evaluation(run: Run, metrics: dict[str, float], n_importance: int) -> list[str]:
    """Log `vaelab eval`'s test metrics into the runs of the training's loggers (those its
    config.yaml names) that take them, TensorBoard's and MLflow's, at the step training
    ended, as `eval_k<K>/<metric>`; returns the names of the loggers written to."""
    prefix = evaluation_prefix(n_importance)
    step = max([row.get("step", 0) for row in run.history()] or [0])
    named = {f"{prefix}/{key}": value for key, value in metrics.items()}
    boards = run_adapters(run)
    return [board.key for board in boards if board.log_evaluation(run, named, step)]


def links(runs: Sequence[Run]) -> dict[str, str]:
    """Where `runs` are in each dashboard that locates runs, by its compare column: W&B's
    (always: each url, or the directories of those without one), TensorBoard's and MLflow's
    (where some of them used it)."""
    named = [type(board) for run in runs for board in run_adapters(run)]  # imports a user's
    kinds = dict.fromkeys([*registered(), *named])
    cells = {board.column: board.locate(runs) for board in kinds if board.column}
    return {column: cell for column, cell in cells.items() if cell is not None}


def columns(links_of_rows: Sequence[dict[str, str]]) -> list[str]:
    """The dashboard columns of compare's rows, from each row's `links`, in a fixed order."""
    used = {column for row_links in links_of_rows for column in row_links}
    return [board.column for board in registered() if board.column in used]
