"""Compare's table: Markdown for the terminal (metrics as `mean ± std`, config floats to a
few significant digits) and CSV with every digit (means and stds in columns of their own)."""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vaelab import dashboards
from vaelab.report.labels import TARGET, _column_digits, _value
from vaelab.report.rows import DATA_COLUMN, Row

ERROR_WIDTH = 60


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
    boards = dashboards.columns([row.links for row in rows])
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
        cells.append([*config, *book, *values, *error, *(row.links.get(b, "") for b in boards)])
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
    boards = dashboards.columns([row.links for row in rows])
    records = []
    for row in rows:
        text = [*_config_cells(row, keys, seed_keys), *_bookkeeping_cells(row, head)]
        record: dict[str, Any] = dict(zip(head, text, strict=True))
        for name in metrics:
            record[name], record[f"{name}_std"] = row.mean.get(name), row.std.get(name)
        record["error"] = row.error or ""
        records.append(record | {name: row.links.get(name, "") for name in boards})
    metric_columns = [c for name in metrics for c in (name, f"{name}_std")]
    columns = [*head, *metric_columns, "error", *boards]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(records, columns=columns).astype({c: float for c in metric_columns})
    # Floats as Python writes them (repr: every digit), NaN as an empty cell.
    frame.to_csv(path, index=False)
    return path
