"""TensorBoard: pictures in its Images tab, the final metrics with the config in its HParams
tab, `vaelab eval`'s metrics as a new event file beside training's, and the compare column
of log folders."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from matplotlib.figure import Figure
from torch import Tensor

from vaelab.dashboards.base import Dashboard, run_adapters
from vaelab.runs import Run, shown_paths


class TensorBoardDashboard(Dashboard):
    """Lightning's TensorBoardLogger, whose event files are in `save_dir/name/version`."""

    logger_class = TensorBoardLogger
    column = "tensorboard"

    def log_final(self, logger: Logger, config: dict[str, Any], metrics: dict[str, Any]) -> None:
        """The config with the final val and test figures, once: the HParams tab shows
        metrics only when they come with the hyperparameters."""
        final = {
            key: value
            for key, value in metrics.items()
            if isinstance(value, float) and key.startswith(("val/", "test/")) and "_dim/" not in key
        }
        logger.log_hyperparams(config, final)
        logger.experiment.flush()

    def log_picture(
        self, logger: Logger, key: str, picture: Tensor | Figure, path: Path, step: int
    ) -> None:
        if isinstance(picture, Figure):  # its Images tab
            logger.experiment.add_figure(key, picture, step, close=False)
        else:
            logger.experiment.add_image(key, picture, step)

    def log_evaluation(self, run: Run, metrics: dict[str, float], step: int) -> bool:
        """A new event file in the training's log folder: `tensorboard --logdir` shows the
        evaluation with the run."""
        logger = self.instantiate()
        logger.log_metrics(metrics, step)
        logger.finalize("success")
        return True

    def log_dir(self) -> Path:
        """The folder of the event files, as `tensorboard --logdir` takes it."""
        args = self.arguments
        return Path(args["save_dir"]) / str(args.get("name") or "") / str(args.get("version") or "")

    @classmethod
    def locate(cls, runs: Sequence[Run]) -> str | None:
        """The runs' log folders (each run's first TensorBoard logger)."""
        folders = []
        for run in runs:
            boards = [board for board in run_adapters(run) if isinstance(board, cls)]
            folders += [boards[0].log_dir()] if boards else []
        return shown_paths(folders) if folders else None
