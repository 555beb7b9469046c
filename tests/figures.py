"""What a reader sees in a matplotlib Figure: for the tests of plots and compare."""

import io
import itertools
import re
import warnings

import numpy as np
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.text import Text


def drawn(fig: Figure) -> Figure:
    """`fig` saved as a PNG at 120 dpi, as save_png does, so that its layout has run; a
    warning (e.g. "constrained_layout not applied") raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig.savefig(io.BytesIO(), format="png", dpi=120)
    return fig


def legend_texts(fig: Figure) -> list[str]:
    """The entries of the figure's one legend (beside the axes)."""
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()]


def inside_figure(fig: Figure, artist: Artist) -> bool:
    """Whether the drawn `artist` lies within the figure, rather than cut off at its edge."""
    box = artist.get_window_extent()
    return bool(np.all(box.min >= fig.bbox.min) and np.all(box.max <= fig.bbox.max))


def overlapping(labels: list[Text]) -> list[tuple[str, str]]:
    """The pairs of shown (drawn) labels whose boxes overlap."""
    shown = [t for t in labels if t.get_visible() and t.get_text()]
    return [
        (a.get_text(), b.get_text())
        for a, b in itertools.combinations(shown, 2)
        if a.get_window_extent().overlaps(b.get_window_extent())
    ]


def x_tick_labels(fig: Figure) -> list[Text]:
    ax = fig.axes[0]
    return ax.get_xticklabels() + ax.get_xticklabels(minor=True)


def significant_digits(text: str) -> int:
    """The most significant digits of a number written in `text`: 0.0001164 has 4."""
    numbers = re.findall(r"\d+(?:\.\d+)?", text)
    return max((len(n.replace(".", "").lstrip("0")) for n in numbers), default=0)


def texts(fig: Figure) -> list[str]:
    """Every text the drawn figure shows: titles, labels, ticks, legend entries."""
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
