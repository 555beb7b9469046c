"""hydra-optuna-sweeper's sweeper, whose study is kept by default in the sweep directory.

The search config (`hparams_search=elbo_optuna`) gives the study a SQLite file in the sweep
directory, `sqlite:///<sweep dir>/optuna.db`, so that `optuna-dashboard` opens it and a
continuation can load it. The plugin creates its study before the launcher makes the sweep
directory, and SQLite does not make the folder of its file: this sweeper makes the sweep
directory first; a search started again in its sweep directory numbers its new trials'
jobs after the folders there, so that they never write into an earlier trial's run
directory. Otherwise it is the plugin's. Hydra takes sweepers only from the
`hydra_plugins` namespace, hence this package beside `vaelab`; Hydra imports it at every
start, so without the plugin (`pip install -e ".[sweeps]"`) it defines nothing.
"""

import logging
from pathlib import Path

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _Plugin
except ImportError:  # the sweeps extra is not installed: there is nothing to wrap
    _Plugin = None

log = logging.getLogger(__name__)


def next_job_number(sweep_dir: Path) -> int:
    """The job number after the numbered job folders in `sweep_dir` (0 in a new one)."""
    numbers = [int(p.name) for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(numbers, default=-1) + 1


if _Plugin is not None:

    class OptunaSweeper(_Plugin):
        def sweep(self, arguments: list[str]) -> None:
            sweep_dir = Path(self.sweeper.sweep_dir)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            self.sweeper.job_idx = next_job_number(sweep_dir)
            if self.sweeper.job_idx:
                log.info(
                    "%s holds jobs up to %d: the new trials are jobs %d, %d, ...",
                    sweep_dir,
                    self.sweeper.job_idx - 1,
                    self.sweeper.job_idx,
                    self.sweeper.job_idx + 1,
                )
            return super().sweep(arguments)
