"""Compare's figures from its rows: a metric against each swept parameter, the learning
curves, and the runs' test pictures side by side; a figure per data set and likelihood."""

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from vaelab.frames import FINISHED, _same
from vaelab.plots import save_png
from vaelab.report import charts
from vaelab.report.labels import TARGET, _column_digits, _label
from vaelab.report.rows import Row
from vaelab.runs import TEST_PICTURES, shown_path


def _combinations(rows: Sequence[Row], keys: Sequence[str]) -> int:
    """How many different combinations of values `keys` take over `rows`."""
    return len({tuple(_same(r.config[k]) for k in keys) for r in rows})


def _colour_keys(rows: Sequence[Row], keys: Sequence[str]) -> list[str]:
    """The keys to colour `rows` by: in order, each key that splits them further while
    their combinations stay few, at most charts.MAX_LEGEND for a legend that can be read
    and half the rows, so that a colour groups rows rather than names one. So a key that
    follows from those taken (model.hidden beside model.arch) is left out, and so is one
    with a value per trial, as in a random or Optuna search."""
    most = min(charts.MAX_LEGEND, len(rows) // 2)
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
    return charts.metric_vs_param(
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
    if _combinations(drawn, keys) > charts.MAX_LEGEND:
        colours = _colour_keys(drawn, keys) or colours
    groups = [_label(row.config, colours, digits) for row in drawn]
    shown = ", ".join(k.removesuffix(TARGET) for k in colours)  # model._target_: the model
    kind = "configuration" if colours == list(keys) else shown
    return charts.learning_curves(curves, metric=metric, groups=groups, group_kind=kind, title=data)


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
    return charts.picture_grid(shown, f"test {name}") if shown else None


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


def write_figures(
    rows: Sequence[Row],
    keys: Sequence[str],
    seed_keys: Sequence[str],
    metric: str | None,
    params: Sequence[str],
    curve_metric: str | None,
    out: Path,
) -> list[Path]:
    """The PNGs of `vaelab compare` in `out`: `metric` against each of `params` and the
    learning curves of `curve_metric` (none for None), each a figure per data set and
    likelihood, and the test pictures side by side; the paths written."""
    plot_paths = []
    groups = _by_data(rows)  # a figure per data set and likelihood
    for x_key in params if metric is not None else []:
        for data, members, part in groups:
            fig = metric_figure(members, keys, metric, x_key, bool(seed_keys), data)
            if fig is not None:
                name = f"{_slug(metric)}_vs_{x_key}{part}.png"
                plot_paths.append(save_png(fig, out / name))
    for data, members, part in groups if curve_metric is not None else []:
        fig = curves_figure(members, keys, seed_keys, curve_metric, data)
        if fig is not None:
            name = f"curves_{_slug(curve_metric)}{part}.png"
            plot_paths.append(save_png(fig, out / name))
    for name in COMPARED_PICTURES:
        fig = pictures_figure(rows, keys, seed_keys, name)
        if fig is not None:
            plot_paths.append(save_png(fig, out / f"pictures_{name}.png"))
    return plot_paths
