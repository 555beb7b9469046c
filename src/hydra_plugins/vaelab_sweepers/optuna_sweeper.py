"""hydra-optuna-sweeper's sweeper, whose study is kept by default in the sweep directory.

The search config (`hparams_search=elbo_optuna`) gives the study a SQLite file in the sweep
directory, `sqlite:///<sweep dir>/optuna.db`, so that `optuna-dashboard` opens it and a
continuation can load it. The plugin creates its study before the launcher makes the sweep
directory, and SQLite does not make the folder of its file: this sweeper makes the sweep
directory first, and is otherwise the plugin's. Hydra takes sweepers only from the
`hydra_plugins` namespace, hence this package beside `vaelab`; Hydra imports it at every
start, so without the plugin (`pip install -e ".[sweeps]"`) it defines nothing.
"""

from pathlib import Path

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _Plugin
except ImportError:  # the sweeps extra is not installed: there is nothing to wrap
    _Plugin = None

if _Plugin is not None:

    class OptunaSweeper(_Plugin):
        def sweep(self, arguments: list[str]) -> None:
            Path(self.sweeper.sweep_dir).mkdir(parents=True, exist_ok=True)
            return super().sweep(arguments)
