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

import json
import math
import os
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from vaelab import dashboards, plots
from vaelab.errors import VaelabError
from vaelab.frames import (
    FINISHED,
    _ignored,
    _is_seed,
    _same,
    differing_keys,
    metric_frame,
    over_seeds,
    settings,
)
from vaelab.runs import COMPARE, COMPARE_CSV, TEST_PICTURES, Run, find_runs, shown_path

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
ERROR_WIDTH = 60
DATA_COLUMN = "data/likelihood"
# A fallback's data are a stand-in set of their own (5,000 MNIST digits, not MNIST's).
STAND_IN = "fallback:"


def data_and_likelihood(flat: dict[str, Any], source: str | None) -> str:
    """What a run's nll, bpd and ELBO are figures of, as a label: the data set (its folder,
    image size, a fallback's stand-in set), binary or 8-bit pixels, and the likelihood.
    Runs with different labels are never averaged together nor drawn on one axis.

    Args:
        flat: the run's flat settings (`vaelab.frames.settings`).
        source: where its data came from (`Run.data_source`), which names a fallback's set.
    """
    data = [flat.get(k) for k in ("data.name", "data.path")]
    if flat.get("data.image_size") is not None:
        data.append(f"{flat['data.image_size']}px")
    if source and source.startswith(STAND_IN):
        data.append(f"({source})")
    pixels = {"none": "8-bit"}.get(flat.get("data.binarize"), "binary")
    parts = [
        " ".join(str(d) for d in data if d is not None),
        pixels if "data.binarize" in flat else None,
        f"likelihood={flat['likelihood']}" if flat.get("likelihood") else None,
    ]
    return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class Row:
    """One row of the table: the finished runs of one configuration, or one other run.

    `config` holds the differing keys other than seeds; `mean` and `std` the final metrics
    over the runs that report them (std is NaN below two values); `n_importance` the K
    behind their test/nll_iwae, each K once; `data` what their figures are of
    (`data_and_likelihood`).
    """

    config: dict[str, Any]
    seeds: list[Any]
    status: str
    runs: list[Run]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    n_importance: list[int] = field(default_factory=list)
    data: str = ""

    @property
    def n(self) -> int:
        """How many finished runs the row averages."""
        return len(self.runs) if self.status == FINISHED else 0


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


def _order(value: Any) -> tuple[int, float, str]:
    """Sort numbers by value, then strings, then nulls."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (2, 0.0, "") if value is None else (1, 0.0, str(value))


def _mean_std(runs: list[Run]) -> tuple[dict[str, float], dict[str, float]]:
    """The runs' final metrics' mean and std (over n - 1; NaN for one value), non-finite
    values left out."""
    metrics = metric_frame(runs)
    if metrics.columns.empty:
        return {}, {}
    stats = over_seeds(metrics).iloc[0]
    mean, std, n = (stats.xs(stat, level=1) for stat in ("mean", "std", "n"))
    return mean.dropna().to_dict(), std.loc[n > 0].to_dict()


def _n_importance(runs: list[Run]) -> list[int]:
    """The K of the runs' test/nll_iwae: of the evaluation shown, else of training's test."""
    found = set()
    for run in runs:
        evaluation = run.shown_evaluation()
        k = (evaluation or {}).get("n_importance") or run.config().get("n_importance")
        if "test/nll_iwae" in run.metrics() and isinstance(k, int):
            found.add(k)
    return sorted(found)


def group_rows(
    runs: Sequence[Run],
    flat: Sequence[dict[str, Any]],
    keys: Sequence[str],
    seed_keys: Sequence[str],
) -> list[Row]:
    """The finished runs that differ only in their seeds make one row; others a row each.

    Args:
        runs: the runs, and `flat` their flat configs (`settings`), in the same order.
        keys: the differing keys other than seeds, `seed_keys` the seed keys.
    """
    flat = {run.path: f for run, f in zip(runs, flat, strict=True)}
    states = {run.path: run.state for run in runs}
    data = {run.path: data_and_likelihood(flat[run.path], run.data_source()) for run in runs}
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        config_key = tuple(_same(flat[run.path].get(k)) for k in keys)
        single = () if states[run.path] == FINISHED else (run.path,)
        groups.setdefault((*config_key, data[run.path], *single), []).append(run)
    rows = []
    for members in groups.values():
        first = flat[members[0].path]
        seeds = [tuple(flat[r.path].get(k) for k in seed_keys) for r in members]
        state = states[members[0].path]
        mean, std = _mean_std(members) if state == FINISHED else ({}, {})
        rows.append(
            Row(
                config={k: first.get(k) for k in keys},
                seeds=[s[0] if len(s) == 1 else s for s in seeds] if seed_keys else [],
                status=state,
                runs=members,
                mean=mean,
                std=std,
                error=None if state == FINISHED else members[0].error,
                n_importance=_n_importance(members) if state == FINISHED else [],
                data=data[members[0].path],
            )
        )
    status_order = {FINISHED: 0}
    return sorted(
        rows,
        key=lambda r: (
            [_order(r.config[k]) for k in keys],
            status_order.get(r.status, 1),
            [_order(s) for s in r.seeds],
        ),
    )


def _mean_text(mean: float, std: float) -> str:
    """Two decimals (three significant digits below 1), the std with the mean's decimals:
    `-95.12 ± 0.34`, or `-95.12` without a std."""
    if math.isnan(mean):
        return ""
    small = math.isfinite(mean) and 0 < abs(mean) < 1
    decimals = 2 - math.floor(math.log10(abs(mean))) if small else 2
    text = f"{mean:.{decimals}f}"
    return text if math.isnan(std) else f"{text} ± {std:.{decimals}f}"


def _short(error: str | None) -> str:
    if not error:
        return ""
    error = " ".join(error.split())
    return error if len(error) <= ERROR_WIDTH else error[: ERROR_WIDTH - 1] + "…"


TARGET = "._target_"  # a model part's class, e.g. prior._target_


def _value(value: Any, digits: int | None = None) -> str:
    """A config value as text; a float rounded to `digits` significant digits if given."""
    if isinstance(value, float) and digits is not None and math.isfinite(value):
        value = float(f"{value:.{digits}g}")  # then printed as Python does: 1.0, 0.0001164
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return "null" if value is None else str(value)


def _digits(values: Iterable[Any]) -> int:
    """The significant digits to show these config values with: plots.SIGNIFICANT_DIGITS,
    or more where fewer would show two different floats the same."""
    floats = {v for v in values if isinstance(v, float) and math.isfinite(v)}
    return next(
        d
        for d in range(plots.SIGNIFICANT_DIGITS, 18)  # 17 digits tell any two floats apart
        if len({f"{v:.{d}g}" for v in floats}) == len(floats)
    )


def _column_digits(rows: Sequence[Row], keys: Sequence[str]) -> dict[str, int]:
    return {k: _digits(r.config[k] for r in rows) for k in keys}


def _config_cells(
    row: Row, keys: Sequence[str], seed_keys: Sequence[str], digits: dict[str, int] | None = None
) -> list[str]:
    """The row's config values and seeds; floats rounded to `digits` (per key) and a model
    part's `_target_` shown by its class name (VampPrior), if `digits` is given."""
    seeds = [", ".join(_value(s) for s in row.seeds)] if seed_keys else []
    cells = [_value(row.config[k], (digits or {}).get(k)) for k in keys]
    if digits is not None:
        cells = [
            c.rsplit(".", 1)[-1] if k.endswith(TARGET) else c
            for k, c in zip(keys, cells, strict=True)
        ]
    return [*cells, *seeds]


def _columns(
    rows: Sequence[Row], keys: Sequence[str], seed_keys: Sequence[str], metrics: Sequence[str]
) -> tuple[list[str], bool]:
    """The config and bookkeeping column names, and whether an error column is needed.

    With test/nll_iwae, a "K" column says how many importance samples it used; with rows
    of different data or likelihoods, a DATA_COLUMN says which (`data_and_likelihood`).
    """
    seed_column = ["/".join(seed_keys)] if seed_keys else []
    data_column = [DATA_COLUMN] if len({r.data for r in rows}) > 1 else []
    k_column = ["K"] if "test/nll_iwae" in metrics else []
    head = [*keys, *seed_column, *data_column, "n", "status", *k_column]
    return head, any(r.error for r in rows)


def _bookkeeping_cells(row: Row, head: Sequence[str]) -> list[str]:
    """The data and likelihood, n, status and K, those that `head` has."""
    data_cell = [row.data] if DATA_COLUMN in head else []
    k_cell = [", ".join(map(str, row.n_importance))] if head[-1] == "K" else []
    return [*data_cell, str(row.n), row.status, *k_cell]


def markdown_table(
    rows: Sequence[Row], keys: Sequence[str], seed_keys: Sequence[str], metrics: Sequence[str]
) -> str:
    """The rows as a padded Markdown table, metrics as `mean ± std`, config floats to
    about four significant digits (`_digits`)."""
    head, with_error = _columns(rows, keys, seed_keys, metrics)
    head = [h.removesuffix(TARGET) for h in head]  # prior._target_: the prior
    boards = dashboards.columns([row.runs for row in rows])
    header = [*head, *metrics, *(["error"] if with_error else []), *boards]
    digits = _column_digits(rows, keys)
    cells = []
    for row in rows:
        config = _config_cells(row, keys, seed_keys, digits)
        values = []
        for name in metrics:
            values.append(_mean_text(row.mean.get(name, math.nan), row.std.get(name, math.nan)))
        error = [_short(row.error)] if with_error else []
        book = _bookkeeping_cells(row, head)
        links = dashboards.links(row.runs)
        cells.append([*config, *book, *values, *error, *(links.get(b, "") for b in boards)])
    n_at = head.index("n")
    right = {n_at, *range(n_at + 2, len(head) + len(metrics))}  # n, K and metrics
    cells = [[c.replace("|", "\\|") for c in line] for line in [header, *cells]]
    widths = [max(3, *(len(line[i]) for line in cells)) for i in range(len(header))]

    def line(items: Sequence[str]) -> str:
        padded = [
            s.rjust(widths[i]) if i in right else s.ljust(widths[i]) for i, s in enumerate(items)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if i in right else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(cells[0]), line(rule), *map(line, cells[1:])])


def write_csv(
    rows: Sequence[Row],
    keys: Sequence[str],
    seed_keys: Sequence[str],
    metrics: Sequence[str],
    path: Path,
) -> Path:
    """The table with exact numbers: `<metric>` (mean) and `<metric>_std` columns."""
    head, _ = _columns(rows, keys, seed_keys, metrics)
    boards = dashboards.columns([row.runs for row in rows])
    records = []
    for row in rows:
        links = dashboards.links(row.runs)
        text = [*_config_cells(row, keys, seed_keys), *_bookkeeping_cells(row, head)]
        record: dict[str, Any] = dict(zip(head, text, strict=True))
        for name in metrics:
            record[name], record[f"{name}_std"] = row.mean.get(name), row.std.get(name)
        record["error"] = row.error or ""
        records.append(record | {name: links.get(name, "") for name in boards})
    metric_columns = [c for name in metrics for c in (name, f"{name}_std")]
    columns = [*head, *metric_columns, "error", *boards]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(records, columns=columns).astype({c: float for c in metric_columns})
    # Floats as Python writes them (repr: every digit), NaN as an empty cell.
    frame.to_csv(path, index=False)
    return path


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


def _label(config: dict[str, Any], keys: Sequence[str], digits: dict[str, int]) -> str:
    """`key=value, ...` of the keys a run has (null ones left out), a model part as
    `prior=VampPrior`."""
    items = []
    for k in keys:
        if config[k] is None:
            continue
        value = _value(config[k], digits.get(k))
        if k.endswith(TARGET):
            k, value = k.removesuffix(TARGET), value.rsplit(".", 1)[-1]
        items.append(f"{k}={value}")
    return ", ".join(items)


def _combinations(rows: Sequence[Row], keys: Sequence[str]) -> int:
    """How many different combinations of values `keys` take over `rows`."""
    return len({tuple(_same(r.config[k]) for k in keys) for r in rows})


def _colour_keys(rows: Sequence[Row], keys: Sequence[str]) -> list[str]:
    """The keys to colour `rows` by: in order, each key that splits them further while
    their combinations stay few, at most plots.MAX_LEGEND for a legend that can be read
    and half the rows, so that a colour groups rows rather than names one. So a key that
    follows from those taken (model.hidden beside model.arch) is left out, and so is one
    with a value per trial, as in a random or Optuna search."""
    most = min(plots.MAX_LEGEND, len(rows) // 2)
    chosen: list[str] = []
    for key in keys:
        if _combinations(rows, chosen) < _combinations(rows, [*chosen, key]) <= most:
            chosen.append(key)
    return chosen


def metric_figure(
    rows: Sequence[Row],
    keys: Sequence[str],
    metric: str,
    param: str,
    averaged: bool,
    data: str = "",
) -> Figure | None:
    """`metric` against `param` over the finished rows; None when no finished row reports
    `metric`.

    The other differing keys colour the points as far as a legend can name them
    (`_colour_keys`). When those keys are all that varies, each colour is a line;
    otherwise its points differ in more than `param`, stay unjoined, and the title names
    the keys that also vary (each has its own plot when numeric); `data`, where given,
    heads the title (the one data set and likelihood of `rows`).
    """
    shown = [
        r for r in rows if r.status == FINISHED and metric in r.mean and r.config[param] is not None
    ]
    if not shown:
        return None
    others = [k for k in keys if k != param]
    colours = _colour_keys(shown, others)
    digits = _column_digits(shown, colours)
    series: dict[str, list[tuple[Any, float, float]]] = {}
    for row in shown:
        point = (row.config[param], row.mean[metric], row.std[metric])
        series.setdefault(_label(row.config, colours, digits), []).append(point)
    taken = _combinations(shown, colours)
    varying = [k for k in others if _combinations(shown, [*colours, k]) > taken]
    notes = [
        data,
        "mean ± std over seeds" if averaged else "",
        f"also varying: {', '.join(varying)}" if varying else "",
    ]
    title = textwrap.fill("; ".join(n for n in notes if n), width=60)
    return plots.metric_vs_param(
        series, param=param, metric=metric, title=title, connect=not varying
    )


def curves_figure(
    rows: Sequence[Row],
    keys: Sequence[str],
    seed_keys: Sequence[str],
    metric: str,
    data: str = "",
) -> Figure | None:
    """The learning curves of every run whose history has `metric` (None without one),
    labelled by its differing config values and, unless finished, its status; `data`, where
    given, is the title (the one data set and likelihood of `rows`).

    A configuration's runs share a colour; with more configurations than a legend can
    name, the colours are by the keys that it can (`_colour_keys`), if any.
    """
    digits = _column_digits(rows, keys)
    curves, drawn = {}, []
    for row in rows:
        for run, seed in zip(row.runs, row.seeds or [()] * len(row.runs), strict=True):
            history = [r for r in run.history() if metric in r and "epoch" in r]
            if not history:
                continue
            seeds = seed if len(seed_keys) > 1 else (seed,) * len(seed_keys)
            config = {**row.config, **dict(zip(seed_keys, seeds, strict=True))}
            label = _label(config, [*keys, *seed_keys], digits) or run.name
            if row.status != FINISHED:
                label = f"{label} ({row.status})"
            if label in curves:  # the same config and seed twice, e.g. in two sweeps
                label = f"{label} [{shown_path(run.path)}]"
            curves[label] = ([r["epoch"] for r in history], [r[metric] for r in history])
            drawn.append(row)
    if not curves:
        return None
    colours = list(keys)
    if _combinations(drawn, keys) > plots.MAX_LEGEND:
        colours = _colour_keys(drawn, keys) or colours
    groups = [_label(row.config, colours, digits) for row in drawn]
    kind = "configuration" if colours == list(keys) else ", ".join(colours)
    return plots.learning_curves(curves, metric=metric, groups=groups, group_kind=kind, title=data)


# The test pictures `vaelab compare` puts side by side, one figure each.
COMPARED_PICTURES = ("samples", "reconstructions")


def pictures_figure(
    rows: Sequence[Row], keys: Sequence[str], seed_keys: Sequence[str], name: str
) -> Figure | None:
    """The test picture `name` of every run that drew one, side by side, each titled by its
    differing config values (None without any)."""
    digits = _column_digits(rows, keys)
    shown: dict[str, Path] = {}
    for row in rows:
        for run, seed in zip(row.runs, row.seeds or [()] * len(row.runs), strict=True):
            path = run.pictures_dir / TEST_PICTURES / f"{name}.png"
            if not path.is_file():
                continue
            seeds = seed if len(seed_keys) > 1 else (seed,) * len(seed_keys)
            config = {**row.config, **dict(zip(seed_keys, seeds, strict=True))}
            label = _label(config, [*keys, *seed_keys], digits) or run.name
            if label in shown:
                label = f"{label} [{shown_path(run.path)}]"
            shown[label] = path
    return plots.picture_grid(shown, f"test {name}") if shown else None


def _slug(name: str) -> str:
    return name.replace("/", "_")


def _data_slug(data: str) -> str:
    """A file name's part for a data set and likelihood: `_mnist-8-bit-likelihood-gaussian`."""
    return "_" + re.sub(r"[^\w.]+", "-", data).strip("-")


def _by_data(rows: Sequence[Row]) -> list[tuple[str, list[Row], str]]:
    """The rows of each data set and likelihood, with its title and file name part: all
    rows untitled when they share one, so that no axis mixes figures of different data."""
    kinds = list(dict.fromkeys(r.data for r in rows))
    if len(kinds) < 2:
        return [("", list(rows), "")]
    return [(kind, [r for r in rows if r.data == kind], _data_slug(kind)) for kind in kinds]


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
    plot_paths = []
    groups = _by_data(rows)  # a figure per data set and likelihood
    for x_key in params if metric in final else []:
        for data, members, part in groups:
            fig = metric_figure(members, keys, metric, x_key, bool(seed_keys), data)
            if fig is not None:
                name = f"{_slug(metric)}_vs_{x_key}{part}.png"
                plot_paths.append(plots.save_png(fig, out / name))
    curve_metric = metric if metric in history else "val/elbo"
    for data, members, part in groups if curve_metric in history else []:
        fig = curves_figure(members, keys, seed_keys, curve_metric, data)
        if fig is not None:
            name = f"curves_{_slug(curve_metric)}{part}.png"
            plot_paths.append(plots.save_png(fig, out / name))
    for name in COMPARED_PICTURES:
        fig = pictures_figure(rows, keys, seed_keys, name)
        if fig is not None:
            plot_paths.append(plots.save_png(fig, out / f"pictures_{name}.png"))
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
