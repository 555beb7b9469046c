"""The charts of `vaelab compare`: a metric against a parameter, learning curves, and runs'
pictures side by side. Pure functions: plain numbers or PNG files in, matplotlib Figures out."""

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator, NullLocator

# A legend longer than this is not read; the plots name fewer things, or nothing, instead.
MAX_LEGEND = 10
# Numbers in labels: enough digits to tell swept values apart, not a float's 17.
SIGNIFICANT_DIGITS = 4
# Numeric x values are ticked where they are when there are at most this many.
MAX_VALUE_TICKS = 8


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_text(value: float) -> str:
    """`value` to SIGNIFICANT_DIGITS significant digits: 0.0001164, 3.93, 64."""
    return f"{value:.{SIGNIFICANT_DIGITS}g}"


def _legend_beside(fig: Figure, handles: Sequence[Any], labels: Sequence[str]) -> None:
    """A legend right of the axes; the figure is widened by the legend's width, so that
    the axes keep their size and the constrained layout has room for both."""
    legend = fig.legend(handles, labels, loc="outside right center", fontsize="small")
    fig.set_figwidth(fig.get_figwidth() + legend.get_window_extent().width / fig.dpi)


def _crowded(labels: Sequence[Any]) -> bool:
    """Whether neighbouring tick labels (of a drawn axis) touch or overlap."""
    boxes = [t.get_window_extent() for t in labels if t.get_visible() and t.get_text()]
    # Half a line's height apart at least, so that two labels do not read as one.
    return any(a.x1 + a.height / 2 > b.x0 for a, b in itertools.pairwise(boxes))


def _numeric_x_axis(ax: Any, xs: Sequence[float]) -> None:
    """Log scale when the values are positive and span 10x or more. Each value gets a
    tick when there are few and their labels lie apart, else round numbers do. Called
    last: it draws the figure to see the labels where the layout puts them."""
    values = sorted(set(xs))
    if values[0] > 0 and values[-1] >= 10 * values[0]:
        ax.set_xscale("log")
    if len(values) <= MAX_VALUE_TICKS:
        ax.set_xticks(values, [_number_text(v) for v in values])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.figure.draw_without_rendering()
        if not _crowded(ax.get_xticklabels()):
            return
        ax.set_xscale(ax.get_xscale())  # back to the scale's own ticks
    if ax.get_xscale() == "linear":
        integer = all(float(v).is_integer() for v in values)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=integer))
    elif values[0] >= 1:  # 20, 60 rather than 2×10¹, 6×10¹ for sizes such as latent_dim
        ax.xaxis.set_major_formatter(LogFormatter())
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def metric_vs_param(
    series: Mapping[str, Sequence[tuple[Any, float, float]]],
    param: str,
    metric: str,
    title: str = "",
    connect: bool = True,
) -> Figure:
    """`metric` against `param` with error bars, a colour per series.

    Args:
        series: label -> points (x, mean, std); a NaN std draws no error bar. A single
            series labelled "" gets no legend; others a legend beside the axes.
        param: the x axis label. Numeric x values are on a log axis when all are positive
            and span a factor of 10 or more, ticked where they are when there are few and
            they lie apart, else at round numbers; other values are categories.
        metric: the y axis label.
        connect: join the points of a series by a line; False when they differ in more
            than `param`, so that a line would suggest a trend that is not there.
    """
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    xs = [x for points in series.values() for x, _, _ in points]
    numeric = all(_is_number(x) for x in xs)
    for label, points in series.items():
        points = sorted(points, key=lambda p: p[0]) if numeric else list(points)
        x = [p[0] if numeric else str(p[0]) for p in points]
        mean = [p[1] for p in points]
        std = [p[2] for p in points]
        ls = "-" if connect else "none"
        ax.errorbar(x, mean, yerr=std, marker="o", ls=ls, capsize=3, label=label or None)
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    if any(series):
        _legend_beside(fig, *ax.get_legend_handles_labels())
    if numeric and xs:
        _numeric_x_axis(ax, xs)
    return fig


LINE_STYLES = ("-", "--", ":", "-.")


def learning_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    metric: str,
    title: str = "",
    groups: Sequence[str] | None = None,
    group_kind: str = "configuration",
) -> Figure:
    """`metric` against the epoch, one line per run.

    Up to MAX_LEGEND curves are named in a legend beside the axes. More are named by
    their groups when there are at most MAX_LEGEND of these, else not at all; the title
    says which.

    Args:
        curves: label -> (epochs, values).
        groups: one name per curve, in order: the curves of a group (e.g. the seeds of a
            configuration) share a colour and differ in line style. Default: a colour each.
        group_kind: what a group is, for the title ("a colour per configuration").
    """
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    groups = list(curves) if groups is None else list(groups)
    if len(groups) != len(curves):
        raise ValueError(f"{len(groups)} group names for {len(curves)} curves")
    named = len(curves) <= MAX_LEGEND
    colours: dict[str, int] = {}
    seen: dict[str, int] = {}
    lines = {}
    for (label, (epochs, values)), group in zip(curves.items(), groups, strict=True):
        colour = colours.setdefault(group, len(colours))
        # Line styles tell the runs of a group apart only where the legend names them.
        style = LINE_STYLES[seen.get(group, 0) % len(LINE_STYLES)] if named else "-"
        seen[group] = seen.get(group, 0) + 1
        # Markers, so that a run with a single epoch shows too.
        (line,) = ax.plot(epochs, values, f"C{colour % 10}", ls=style, marker=".", label=label)
        lines.setdefault(group, line)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    note = ""
    if named and curves:
        _legend_beside(fig, *ax.get_legend_handles_labels())
    elif not named and 1 < len(lines) <= MAX_LEGEND:
        _legend_beside(fig, list(lines.values()), list(lines))
        note = f"{len(curves)} runs, a colour per {group_kind}"
    elif not named:
        note = f"{len(curves)} runs, too many to name"
    ax.set_title("; ".join(t for t in (title, note) if t), fontsize="medium")
    return fig


MAX_PICTURES = 24  # pictures in one figure of `picture_grid`; more are left out, and it says so


def picture_grid(pictures: dict[str, Path], title: str = "") -> Figure:
    """PNG files side by side, in a near-square grid of panels, each titled by its key."""
    from matplotlib.image import imread

    items = list(pictures.items())[:MAX_PICTURES]
    columns = math.ceil(math.sqrt(len(items)))
    rows = math.ceil(len(items) / columns)
    fig = Figure(figsize=(3.2 * columns, 3.5 * rows), layout="constrained")
    for i, (label, path) in enumerate(items):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(imread(path), interpolation="nearest")
        ax.set_title(label, fontsize="small", wrap=True)
        ax.set_axis_off()
    left_out = len(pictures) - len(items)
    fig.suptitle(f"{title} (the first {len(items)}; {left_out} more)" if left_out else title)
    return fig
