"""`vaelab compare PATH...`: what differs between runs, their final metrics, and two plots.

One row per configuration: the config keys that differ between the runs, the final
metrics as mean ± std over seeds, the status, the K of test/nll_iwae, and where each run
is (its W&B url, or its directory; its TensorBoard folder and MLflow run when it used
them). A run's final metrics are its metrics.json updated by
one evaluation of `vaelab eval` (`Run.evaluation`: of the best checkpoint, the largest
K). Runs that did not finish are never averaged in: each has its own row. The table is
returned as Markdown and written to compare.csv; the plots are a metric against each
swept numeric parameter and the learning curves, a figure per data set and likelihood
(`data_and_likelihood`) when the runs have several. Everything is read from the run
directories.
"""

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelab.errors import VaelabError
from vaelab.frames import _ignored, _is_seed, _same, differing_keys, settings
from vaelab.report.figures import write_figures
from vaelab.report.rows import Row, group_rows
from vaelab.report.table import markdown_table, write_csv
from vaelab.runs import COMPARE, COMPARE_CSV, Run, find_runs

HEADLINE_METRICS = (
    "val/elbo",
    "test/elbo",
    "test/rec",
    "test/kl",
    "test/nll_iwae",
    "test/active_units",
)


DEFAULT_METRICS = ("test/nll_iwae", "val/elbo")  # the first one the runs report is plotted


K_NOTE = (
    "the importance samples per image of test/nll_iwae: of the eval.py evaluation shown "
    "(the best checkpoint's on the most test images, then with the largest K, when it has as "
    "many test images and samples as training's test), else of training's test"
)


@dataclass(frozen=True)
class Comparison:
    """What `run` found and wrote.

    Attributes:
        rows: the table's rows, in the order printed.
        keys: the config keys that differ between the runs, seeds excluded.
        seed_keys: the differing seed keys (averaged over), e.g. ["seed"].
        metrics: the metric columns.
        markdown: the table for the terminal.
        csv_path: the same table in CSV, with means and stds in separate columns.
        plot_paths: the PNG plots written (none when there is nothing to plot).
        metric: the metric plotted (None when the runs report none).
        params: the config keys on the x axes of the metric plots, one plot each.
    """

    rows: list[Row]
    keys: list[str]
    seed_keys: list[str]
    metrics: list[str]
    markdown: str
    csv_path: Path
    plot_paths: list[Path]
    metric: str | None
    params: list[str]


def _reported(runs: Sequence[Run]) -> tuple[set[str], set[str]]:
    """The metric names with a finite final value in some run, and those in some history."""
    final = {
        name
        for run in runs
        for name, value in run.metrics().items()
        if isinstance(value, int | float) and math.isfinite(value)
    }
    history = {name for run in runs for row in run.history() for name in row}
    return final, history - {"epoch", "step"}


def _choose_metric(metric: str | None, final: set[str], history: set[str]) -> str | None:
    if metric is None:
        return next((m for m in DEFAULT_METRICS if m in final), None)
    if metric not in final | history:
        known = sorted(m for m in final | history if "_dim/" not in m)
        raise VaelabError(
            f"no run reports the metric {metric!r}: choose one of {', '.join(known) or '(none)'}"
        )
    return metric


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _choose_params(
    param: str | None,
    flat: Sequence[dict[str, Any]],
    keys: Sequence[str],
    seed_keys: Sequence[str],
    echoes: dict[str, str],
) -> list[str]:
    """The keys on the metric plots' x axes: `param`, else every differing key with two
    or more numeric values (and no other values but null)."""
    if param is None:
        return [
            k
            for k in keys
            if all(_is_number(f[k]) for f in flat if f.get(k) is not None)
            and len({_same(f.get(k)) for f in flat} - {None}) > 1
        ]
    param = echoes.get(param, param)
    if param in keys:
        return [param]
    choices = ", ".join(keys) if keys else "none, the runs differ only in their seeds"
    if param in seed_keys:
        reason = "is averaged over (mean ± std)"
    elif _ignored(param):
        reason = "names or places a run rather than configures it"
    elif any(param in f for f in flat):
        reason = "has the same value in all runs"
    else:
        reason = "is not a setting of the runs"
    raise VaelabError(f"--param {param} {reason}: choose a key that differs ({choices})")


def _default_out_dir(paths: Sequence[Path]) -> Path:
    """PATH/compare for one multirun or parent of runs; ./compare otherwise."""
    if len(paths) == 1 and not Run(paths[0]).exists():
        return paths[0] / COMPARE
    return Path(COMPARE)


def run(
    paths: Sequence[str | Path],
    metric: str | None = None,
    param: str | None = None,
    out_dir: str | Path | None = None,
) -> Comparison:
    """Compare the runs under `paths`: a table of what differs and the metrics, and plots.

    Args:
        paths: a multirun directory, a parent of runs, or run directories.
        metric: the metric to plot; default test/nll_iwae when the runs report it, else
            val/elbo. The learning curves show it when the histories have it, else val/elbo.
        param: the config key on the x axis; default a plot for each numeric key that
            differs (seeds aside). The other differing keys colour the points while they
            take few values (`metric_figure`).
        out_dir: where compare.csv and the PNGs go; default PATH/compare for a single PATH
            that is not itself a run directory, else ./compare.

    Raises:
        VaelabError: no runs under `paths`, or a metric or param the runs do not have.
    """
    paths = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    if not paths:
        raise VaelabError(
            "give the runs to compare: a multirun directory, run directories or a parent of runs"
        )
    runs = find_runs(paths)
    flat = [settings(r) for r in runs]
    differing, echoes = differing_keys(flat)
    seed_keys = [k for k in differing if _is_seed(k)]
    keys = [k for k in differing if not _is_seed(k)]
    rows = group_rows(runs, flat, keys, seed_keys)
    final, history = _reported(runs)
    metric = _choose_metric(metric, final, history)
    params = _choose_params(param, flat, keys, seed_keys, echoes)
    metrics = [m for m in HEADLINE_METRICS if m in final]
    if metric in final and metric not in metrics:
        metrics.append(metric)

    out = Path(out_dir) if out_dir is not None else _default_out_dir(paths)
    csv_path = write_csv(rows, keys, seed_keys, metrics, out / COMPARE_CSV)
    curve_metric = metric if metric in history else "val/elbo"
    plot_paths = write_figures(
        rows,
        keys,
        seed_keys,
        metric=metric if metric in final else None,
        params=params,
        curve_metric=curve_metric if curve_metric in history else None,
        out=out,
    )
    return Comparison(
        rows=rows,
        keys=keys,
        seed_keys=seed_keys,
        metrics=metrics,
        markdown=markdown_table(rows, keys, seed_keys, metrics),
        csv_path=csv_path,
        plot_paths=plot_paths,
        metric=metric,
        params=params,
    )
