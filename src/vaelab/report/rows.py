"""Compare's rows: the finished runs of one configuration, or one other run, with their
final metrics' mean and std over seeds (`vaelab.frames.over_seeds`, the statistic
`Runs.summary` shows, computed once for all rows)."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pandas as pd

from vaelab import dashboards
from vaelab.frames import FINISHED, _same, metric_frame, over_seeds
from vaelab.runs import Run

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
        f"likelihood={flat['likelihood.name']}" if flat.get("likelihood.name") else None,
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

    @cached_property
    def links(self) -> dict[str, str]:
        """Where the row's runs are in each dashboard, by compare column (`dashboards.links`,
        which reads their run directories): once for the table and the CSV."""
        return dashboards.links(self.runs)


def _order(value: Any) -> tuple[int, float, str]:
    """Sort numbers by value, then strings, then nulls."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (2, 0.0, "") if value is None else (1, 0.0, str(value))


def _n_importance(runs: list[Run]) -> list[int]:
    """The K of the runs' test/nll_iwae: of the evaluation shown, else of training's test."""
    found = set()
    for run in runs:
        evaluation = run.shown_evaluation()
        k = (evaluation or {}).get("n_importance") or run.config().get("n_importance")
        if "test/nll_iwae" in run.metrics() and isinstance(k, int):
            found.add(k)
    return sorted(found)


def _over_seeds(groups: Sequence[list[Run]]) -> dict[int, tuple[dict, dict]]:
    """Each group's final metrics' mean and std (over n - 1; NaN for one value), non-finite
    values left out: one `over_seeds` over all the groups, keyed by the group's id()."""
    runs = [run for members in groups for run in members]
    metrics = metric_frame(runs)
    if metrics.columns.empty:
        return {}
    labels = pd.Series([i for i, members in enumerate(groups) for _ in members])
    stats = over_seeds(metrics, [labels])
    found = {}
    for i, members in enumerate(groups):
        mean, std, n = (stats.loc[i].xs(stat, level=1) for stat in ("mean", "std", "n"))
        found[id(members)] = (mean.dropna().to_dict(), std.loc[n > 0].to_dict())
    return found


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
    stats = _over_seeds([m for m in groups.values() if states[m[0].path] == FINISHED])
    rows = []
    for members in groups.values():
        first = flat[members[0].path]
        seeds = [tuple(flat[r.path].get(k) for k in seed_keys) for r in members]
        state = states[members[0].path]
        mean, std = stats.get(id(members), ({}, {}))
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
