"""Runs as pandas DataFrames, for a notebook: `vaelab.load_runs(paths)`.

One row per run (its directory, status, error, flat config and final metrics), and a
summary with the mean, std and n of each metric over the seeds of each configuration.
What counts as configuration is what `vaelab compare` shows, which is built on this module:
the config without the keys that only name or place a run (`settings`), and the keys that
differ between the runs (`differing_keys`).
"""

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vaelab.errors import VaelabError
from vaelab.runs import Run, find_runs, flatten

# Keys that name, place or log a run rather than configure what it computes.
IGNORED = (
    "paths",
    "run_name",
    "group",
    "tags",
    "project",
    "logger",
    "callbacks",
    "hydra",
    "ckpt_path",
    "resume",
    "data.data_dir",
    "data.download",
)
FINISHED = "finished"
CONFIG = "config."
METRICS = "metrics."
STATS = ["mean", "std", "count"]  # std over n - 1, as statistics.stdev; count is shown as n


def _same(value: Any) -> Any:
    """A hashable stand-in for a config value; 1 and 1.0 are the same value."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in IGNORED)


def _inside(value: Any, run_dir: Path) -> bool:
    """Whether `value` is a path naming `run_dir` or something in it."""
    if not isinstance(value, str) or not value:
        return False
    return Path(value).resolve().is_relative_to(run_dir.resolve())


def settings(run: Run) -> dict[str, Any]:
    """The run's flat config without what names or places the run rather than configures
    it: the `IGNORED` keys, and paths into the run's own directory (e.g.
    trainer.default_root_dir)."""
    flat = flatten(run.config())
    return {k: v for k, v in flat.items() if not _ignored(k) and not _inside(v, run.path)}


def differing_keys(flat: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """The keys whose values differ between the flat configs `flat`, in config order.

    A key that echoes another (same last part, same value in every run, e.g.
    `data.seed: ${seed}`) is shown once, under the shorter name.

    Returns:
        The keys, and the echoes: {echoing key: the key shown for it}.
    """
    keys = list(dict.fromkeys(k for f in flat for k in f))
    columns = {k: tuple(_same(f.get(k)) for f in flat) for k in keys}
    keys = [k for k in keys if len(set(columns[k])) > 1]
    echoes: dict[str, str] = {}
    for key in sorted(keys, key=lambda k: (k.count("."), k)):
        if key in echoes:
            continue
        for other in keys:
            leaf = other.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]
            if other != key and other not in echoes and leaf and columns[other] == columns[key]:
                echoes[other] = key
    return [k for k in keys if k not in echoes], echoes


def _is_seed(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == "seed"


def metric_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """The runs' final metrics (`Run.metrics`), a row per run and a float column per
    metric: NaN where a run has none, or a value that is not a finite number."""
    rows = [
        {k: float(v) for k, v in run.metrics().items() if isinstance(v, int | float)}
        for run in runs
    ]
    frame = pd.DataFrame(rows, index=range(len(rows)), dtype=float)
    return frame.where(frame.abs() < float("inf"))


def over_seeds(metrics: pd.DataFrame, by: Sequence[pd.Series] = ()) -> pd.DataFrame:
    """Each metric column's mean, std (over n - 1: NaN for one value) and n (the values that
    are not NaN), per group of `by`; one row without `by`. The one statistic over seeds:
    `Runs.summary` and `vaelab compare` show it.

    Returns:
        Columns (metric, mean|std|n).
    """
    # One configuration: one group. Always grouped, so that a group's figures do not depend
    # on what else is summarised (pandas' grouped std rounds unlike its plain one).
    groups = list(by) if by else [[0] * len(metrics)]
    return metrics.groupby(groups, dropna=False).agg(STATS).rename(columns={"count": "n"})


def _cell(value: Any) -> Any:
    # Lists become tuples: a DataFrame can group by them (e.g. a swept list of layer sizes).
    return tuple(_cell(v) for v in value) if isinstance(value, list) else value


def _column(frame: pd.DataFrame, key: str, differing: Sequence[str]) -> str:
    for column in (key, CONFIG + key):
        if column in frame.columns:
            return column
    hint = f", e.g. one that differs: {', '.join(differing)}" if differing else ""
    raise VaelabError(f"by={key!r} is not a column of these runs: give a config.* column{hint}")


def _differing(flat: Sequence[dict[str, Any]]) -> list[str]:
    keys, _ = differing_keys(flat)
    return [CONFIG + k for k in keys if not _is_seed(k)]


@dataclass(frozen=True)
class Runs:
    """The runs that `load_runs` found, in their directories' order."""

    runs: list[Run]

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(self.runs)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per run: `run_dir`, `status` (finished, failed, running, killed, ...),
        `error`, `config.<dotted key>` for every setting, and `metrics.<name>` for every
        final metric (`Run.metrics`: metrics.json with `vaelab eval`'s evaluation; NaN
        where a run has none, e.g. one that did not finish)."""
        return self._frame(self._settings())

    def _settings(self) -> list[dict[str, Any]]:
        """Each run's flat settings, read from its config.yaml."""
        return [settings(run) for run in self.runs]

    def _frame(self, flat: Sequence[dict[str, Any]]) -> pd.DataFrame:
        rows = []
        for run, run_settings in zip(self.runs, flat, strict=True):
            row: dict[str, Any] = {"run_dir": str(run.path), "status": run.state}
            row["error"] = run.error
            row |= {CONFIG + k: _cell(v) for k, v in run_settings.items()}
            row |= {METRICS + k: v for k, v in run.metrics().items()}
            rows.append(row)
        frame = pd.DataFrame(rows)
        metric_columns = [c for c in frame.columns if c.startswith(METRICS)]
        return frame.astype({c: float for c in metric_columns})

    def config_keys(self) -> list[str]:
        """The `config.*` columns that differ between the runs, seeds and keys that echo
        another (e.g. `config.data.seed: ${seed}`) left out: what `summary` groups by."""
        return _differing(self._settings())

    def summary(self, by: Sequence[str] | None = None) -> pd.DataFrame:
        """The finished runs' metrics per configuration: mean, std and n over their seeds.

        Runs that did not finish are left out, as in `vaelab compare` (`to_dataframe`
        shows them with their status and error).

        Args:
            by: the columns to group by (`config.beta` or `beta`); default `config_keys()`.

        Returns:
            One row per configuration (indexed by `by`), columns (metric, mean|std|n): n
            counts the runs reporting the metric, std is NaN for one run.
        """
        flat = self._settings()  # each config.yaml read once
        frame, differing = self._frame(flat), _differing(flat)
        keys = differing if by is None else [_column(frame, k, differing) for k in by]
        finished = frame[frame["status"] == FINISHED]
        metrics = finished[[c for c in frame.columns if c.startswith(METRICS)]]
        return over_seeds(metrics, [finished[k] for k in keys])


def load_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Runs:
    """The runs under `paths` (a multirun directory, run directories or a parent of runs),
    for a notebook: `.to_dataframe()` has a row per run, `.summary()` the metrics' mean,
    std and n over seeds per configuration.

    Raises:
        VaelabError: a path does not exist, or no run was found under any of them.
    """
    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not paths:
        raise VaelabError(
            "give the runs to load: a multirun directory (outputs/multiruns/<time>), run "
            "directories or a parent of runs"
        )
    return Runs(find_runs(paths))
