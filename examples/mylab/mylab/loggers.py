"""A logger of one's own: every metric and the hyperparameters as JSON lines in the run."""

import json
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only


class JsonLinesLogger(Logger):
    """Appends one JSON object a line to `save_dir/metrics.jsonl`: {"step", metrics...}, and
    {"hparams": ...} for the hyperparameters. Appending keeps a resumed run's lines.

    Args:
        save_dir: the folder of the file (the run directory: `${paths.output_dir}`).
    """

    def __init__(self, save_dir: str):
        super().__init__()
        self._path = Path(save_dir) / "metrics.jsonl"

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self._path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self._write({"hparams": params if isinstance(params, dict) else vars(params)})

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._write({"step": step, **metrics})

    def _write(self, row: dict[str, Any]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
