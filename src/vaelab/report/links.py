"""Where compare's rows are in the dashboards: each run's W&B url, TensorBoard folder and
MLflow run, a cell each."""

from collections.abc import Sequence
from pathlib import Path

from vaelab.report.labels import _shown_paths
from vaelab.report.rows import Row
from vaelab.runs import Run


def _wandb_cell(runs: Sequence[Run]) -> str:
    """Each run's W&B url; runs without one by their directory ("offline: outputs/...")."""
    urls, local = [], {}
    for run in runs:
        recorded = run.wandb()
        if recorded.get("url"):
            urls.append(recorded["url"])
        else:
            mode = "offline" if recorded.get("mode") == "offline" else "no W&B"
            local.setdefault(mode, []).append(run.path)
    return " ".join([*urls, *(f"{mode}: {_shown_paths(p)}" for mode, p in local.items())])


def _tensorboard_dir(run: Run) -> Path | None:
    """The run's TensorBoard log folder, if its config has a TensorBoard logger."""
    for logger in (run.config().get("logger") or {}).values():
        if str((logger or {}).get("_target_", "")).endswith("TensorBoardLogger"):
            return (
                Path(logger["save_dir"])
                / str(logger.get("name") or "")
                / str(logger.get("version") or "")
            )
    return None


def _dashboard_cells(runs: Sequence[Run]) -> dict[str, str]:
    """Where the runs are in TensorBoard and MLflow, for the dashboards they used: the
    log folders `tensorboard --logdir` takes, and the MLflow run ids with their store."""
    cells = {}
    folders = [d for d in map(_tensorboard_dir, runs) if d is not None]
    if folders:
        cells["tensorboard"] = _shown_paths(folders)
    stores: dict[str, list[str]] = {}
    for recorded in filter(None, (run.mlflow() for run in runs)):
        stores.setdefault(recorded["tracking_uri"], []).append(recorded["run_id"])
    if stores:
        cells["mlflow"] = " ".join(f"{' '.join(ids)} in {uri}" for uri, ids in stores.items())
    return cells


def _dashboards(rows: Sequence[Row]) -> list[str]:
    """The dashboards besides W&B that any of the rows' runs used: their columns."""
    used = {name for row in rows for name in _dashboard_cells(row.runs)}
    return [name for name in ("tensorboard", "mlflow") if name in used]
