"""MLflow: the store opened safely, a sweep's jobs as the children of one parent run, a
resumed run's MLflow run, pictures as artifacts, the run's id in mlflow.json, `vaelab eval`
into that run, and the compare column of run ids and stores."""

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor

from vaelab.dashboards.base import Dashboard
from vaelab.runs import PICTURES, Run, is_multirun_dir, locked, mlflow_parent_file, write_json

log = logging.getLogger(__name__)


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


def _open_store(uri: str | None) -> None:
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


class MLflowDashboard(Dashboard):
    """Lightning's MLFlowLogger: params, metrics, and the pictures as the run's artifacts."""

    logger_class = MLFlowLogger
    column = "mlflow"

    def build(self, cfg: DictConfig, run: Run) -> Logger:
        _open_store(self.arguments.get("tracking_uri"))
        return self.instantiate(**self._mlflow_run(cfg, run))

    def _mlflow_run(self, cfg: DictConfig, run: Run) -> dict[str, Any]:
        """The MLFlowLogger's run: the one this run directory recorded, when resumed; else a
        new run, tagged as the child of its sweep's parent run when it is a multirun's job
        (the parent made by the sweep's first job, under a lock, and named after the sweep)."""
        recorded = run.mlflow()
        if cfg.get("resume") and recorded:
            return {"run_id": recorded["run_id"]}
        sweep = run.path.parent
        if not is_multirun_dir(sweep):
            return {}
        from mlflow.tracking import MlflowClient

        parent_file = mlflow_parent_file(sweep)
        with locked(parent_file):
            if parent_file.is_file():
                parent = json.loads(parent_file.read_text())["run_id"]
            else:
                client = MlflowClient(tracking_uri=self.arguments.get("tracking_uri"))
                name = self.arguments["experiment_name"]
                experiment = client.get_experiment_by_name(name)
                experiment_id = (
                    experiment.experiment_id
                    if experiment is not None
                    else client.create_experiment(name, self.arguments.get("artifact_location"))
                )
                made = client.create_run(experiment_id, run_name=cfg.get("group") or sweep.name)
                parent = made.info.run_id
                client.set_tag(parent, "vaelab.sweep_dir", str(sweep))
                client.set_terminated(parent)  # a container of the jobs: nothing runs in it
                write_json(parent_file, {"run_id": parent})
        tags = dict(self.arguments.get("tags") or {})
        return {"tags": {**tags, "mlflow.parentRunId": parent}}

    def record(self, run: Run, logger: Logger) -> None:
        run.record_mlflow(run_id=logger.run_id, tracking_uri=logger._tracking_uri)

    def log_config(self, logger: Logger, config: dict[str, Any], resumed: bool) -> None:
        """Not for a resumed run: its params were logged at the first start, and MLflow
        refuses a changed value (a resume's max_epochs); config.yaml records the change."""
        if not resumed:
            logger.log_hyperparams(config)

    def log_picture(
        self, logger: Logger, key: str, picture: Tensor | Figure, path: Path, step: int
    ) -> None:
        # The run's artifacts, as the files: pictures/<folder>/<name>.png, as in the run.
        logger.experiment.log_artifact(logger.run_id, str(path), f"{PICTURES}/{path.parent.name}")

    def log_evaluation(self, run: Run, metrics: dict[str, float], step: int) -> bool:
        """Into the run its mlflow.json records, in its store; a run without one, or whose
        store is gone, is said in one warning line and left alone."""
        recorded = run.mlflow()
        if not recorded:
            log.warning(
                "MLflow: %s records no MLflow run, so these metrics are not logged", run.path
            )
            return False
        uri = recorded["tracking_uri"]
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            log.warning(
                "MLflow: the store %s of %s is gone, so these metrics are not logged", uri, run.path
            )
            return False
        arguments = {
            "experiment_name": self.arguments.get("experiment_name") or "vaelab",
            "tracking_uri": uri,
            "run_id": recorded["run_id"],
        }
        logger = self.instantiate(arguments)
        logger.log_metrics(metrics, step)
        logger.finalize("success")
        return True

    @classmethod
    def locate(cls, runs: Sequence[Run]) -> str | None:
        """The runs' MLflow run ids, by the store that holds them."""
        stores: dict[str, list[str]] = {}
        for recorded in filter(None, (run.mlflow() for run in runs)):
            stores.setdefault(recorded["tracking_uri"], []).append(recorded["run_id"])
        if not stores:
            return None
        return " ".join(f"{' '.join(ids)} in {uri}" for uri, ids in stores.items())
