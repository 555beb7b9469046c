"""A logger's adapter (`Dashboard`): what vaelab does with one kind of logger, behind one
interface; and the one lookup from a logger's config node, or a built logger, to its adapter."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from lightning.pytorch.loggers import Logger
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from vaelab.config import instantiate
from vaelab.errors import ConfigError
from vaelab.runs import Run
from vaelab.targets import named_class

# Logger classes that moved, as the config.yaml of a run made before names them.
MOVED = {"vaelab.tracking.RunCSVLogger": "vaelab.dashboards.csv.RunCSVLogger"}


class Dashboard:
    """The adapter of a logger: builds it from its config node, and does with it what vaelab
    does with that kind of logger. This class is the adapter of any logger that has none of
    its own (a user's plain Lightning `Logger`): it builds it and logs the run's config.

    A logger's option file names its adapter as `_target_` (conf/logger/wandb.yaml: `_target_:
    vaelab.dashboards.wandb.WandbDashboard`); the node's other keys are the logger's
    arguments. A subclass that sets `logger_class` is the adapter of that class and its
    subclasses wherever one appears: a `_target_` naming the logger class itself (as the
    config.yaml of a run made before the adapters did), and a logger given to the Trainer.
    The methods given a built logger (`record` to `finish`) are called on the adapter of
    its class, so they read the logger, not the node's arguments.

    Args:
        key: the logger's name under `logger` (e.g. "wandb").
        arguments: the logger's arguments, resolved.
        logger_class: the class it builds; the adapter's `logger_class` when None.
    """

    logger_class: ClassVar[type[Logger]] = Logger
    column: ClassVar[str | None] = None  # `vaelab compare`'s column of its `locate`
    _adapters: ClassVar[dict[type, type["Dashboard"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "logger_class" in cls.__dict__:
            Dashboard._adapters[cls.logger_class] = cls

    def __init__(
        self, key: str, arguments: Mapping[str, Any], logger_class: type[Logger] | None = None
    ):
        self.key = key
        self.arguments = dict(arguments)
        self.built_class = logger_class or self.logger_class

    def instantiate(self, arguments: Mapping[str, Any] | None = None, **overrides: Any) -> Logger:
        """The logger, from `arguments` (the node's by default) and `overrides`."""
        target = f"{self.built_class.__module__}.{self.built_class.__qualname__}"
        node = OmegaConf.create({"_target_": target, **(arguments or self.arguments)})
        return instantiate(node, Logger, f"logger.{self.key}", **overrides)

    def build(self, cfg: DictConfig, run: Run) -> Logger:
        """The logger of a training run `cfg`, in `run`'s directory."""
        return self.instantiate()

    def record(self, run: Run, logger: Logger) -> None:
        """Write into the run directory what finds the logger's run again (global rank 0)."""

    def log_config(self, logger: Logger, config: dict[str, Any], resumed: bool) -> None:
        """Log the run's resolved config at its start."""
        logger.log_hyperparams(config)

    def log_final(self, logger: Logger, config: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Log the run's final val and test metrics once more, for dashboards that compare
        runs by them (global rank 0)."""

    def resumed(self, logger: Logger, global_step: int) -> None:
        """The run resumed from the checkpoint of `global_step` (global rank 0)."""

    def log_picture(
        self, logger: Logger, key: str, picture: Tensor | Figure, path: Path, step: int
    ) -> None:
        """Log a picture of the run, also saved as `path` (<run>/pictures/<folder>/<name>.png)."""

    def finish(self, logger: Logger) -> None:
        """Close the logger's run, so that the next job of a multirun starts its own."""

    def attach(self, run: Run, evaluation: dict[str, Any], mode: str | None) -> Logger | None:
        """A logger for `vaelab eval`'s test of `run` (None: it logs nothing while testing).

        Args:
            run: the evaluated run; this adapter is one of its config.yaml's loggers.
            evaluation: what is evaluated (checkpoint, K, seed).
            mode: online, offline or disabled, as `eval.py wandb_mode=` asks; None: as the
                run was logged.
        """
        return None

    def log_evaluation(self, run: Run, metrics: dict[str, float], step: int) -> bool:
        """Log `vaelab eval`'s `metrics` (already named `eval_k<K>/...`) at training's last
        `step` into the training's run of this logger; returns whether it did."""
        return False

    @classmethod
    def locate(cls, runs: Sequence[Run]) -> str | None:
        """Where `runs` are in this dashboard, for `vaelab compare`'s `column` (None: none
        of them is)."""
        return None


def adapter_class(logger_class: type) -> type[Dashboard]:
    """The adapter of a logger class: that of its nearest base with one, else `Dashboard`."""
    for base in logger_class.__mro__:
        if base in Dashboard._adapters:
            return Dashboard._adapters[base]
    return Dashboard


def adapter(key: str, node: Mapping[str, Any]) -> Dashboard:
    """The adapter of the logger node `logger.<key>`: the `Dashboard` its `_target_` names,
    or that of the Lightning `Logger` it names (a logger of a user's, or a run made before
    the adapters: old names are read here, once).

    Raises:
        ConfigError: `_target_` names neither, or cannot be imported.
    """
    arguments = dict(node)
    target = arguments.pop("_target_", None)
    target = MOVED.get(target, target)
    where = f"logger.{key}"
    try:
        return named_class(target, Dashboard, where)(key, arguments)
    except ConfigError:
        logger_class = named_class(target, Logger, where)  # else refused as not a Logger
    return adapter_class(logger_class)(key, arguments, logger_class)


def adapters(loggers: Mapping[str, Any] | None) -> list[Dashboard]:
    """The adapters of a config's `logger` node, resolved (a live config's or a run's)."""
    if isinstance(loggers, DictConfig):
        loggers = OmegaConf.to_container(loggers, resolve=True)
    return [adapter(key, node) for key, node in (loggers or {}).items() if node]


def run_adapters(run: Run) -> list[Dashboard]:
    """The adapters of the loggers in `run`'s config.yaml, leaving out those whose class
    cannot be imported here (a user's package not installed): `vaelab compare` reads the
    run without them."""
    found = []
    for key, node in (run.config().get("logger") or {}).items():
        try:
            found.append(adapter(key, node or {}))
        except ConfigError:
            continue
    return found


def registered() -> list[type[Dashboard]]:
    """The adapters of logger classes, in the order their modules were imported."""
    return list(dict.fromkeys(Dashboard._adapters.values()))
