"""CSV: Lightning's CSVLogger that keeps a resumed run's rows (`RunCSVLogger`)."""

import csv
import os

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from vaelab.dashboards.base import Dashboard


class _KeptRows(ExperimentWriter):
    """Lightning's metrics.csv writer, which appends to the rows already in the file, and
    keeps it open between saves.

    Lightning's writer opens and closes the file at every save, i.e. at every logged step:
    about 0.1 ms each time inside a training run of the tiny network of benchmarks/run.py's
    step section, where a write to the open file took 55 µs. Rows whose columns the file has
    are written to the open file and flushed, so that another process, or a run killed next,
    reads them; a row with a new column closes it and Lightning's save rewrites the file
    with every column."""

    def __init__(self, log_dir: str) -> None:
        self._file = None  # metrics.csv, open for appending after a save
        super().__init__(log_dir=log_dir)

    def save(self) -> None:
        if not self.metrics:
            return
        if self._file is not None and set().union(*self.metrics) <= set(self.metrics_keys):
            csv.DictWriter(self._file, fieldnames=self.metrics_keys).writerows(self.metrics)
            self._file.flush()
            self.metrics = []
            return
        self.close()
        super().save()
        self._file = self._fs.open(self.metrics_file_path, "a", newline="")

    def close(self) -> None:
        """Close metrics.csv (the next save opens it again)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes metrics.csv here. Kept instead, its columns become the writer's,
        # so that a new column rewrites the file with all of them.
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])

    def drop_from(self, step: int) -> None:
        """Drop the rows of `step` and after."""
        self.close()  # the file is replaced: rows written to the old one would be lost
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
    its rows up to the checkpoint it resumes from (`resume_at`) and goes on after them,
    where Lightning's deletes the file when a run starts again."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeptRows(log_dir=self.log_dir)
        return self._experiment

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.close()

    def resume_at(self, global_step: int) -> None:
        """Drop the rows logged after the checkpoint of `global_step`, which the run resumed
        from it logs again. Lightning labels a step's row with the number of steps before
        it, and an epoch's end with its last step's label: these are the rows labelled
        `global_step` and later."""
        self.experiment.drop_from(global_step)


class CSVDashboard(Dashboard):
    """`RunCSVLogger`: `<run>/csv/metrics.csv`, whose rows a resumed run keeps."""

    logger_class = RunCSVLogger

    def resumed(self, logger: Logger, global_step: int) -> None:
        logger.resume_at(global_step)
