"""An earlier vaelab's run configs in today's form (`current_form`, which `Run.config()`
gives every reader) and the data option's source class (`option_source`) that runs made
before `data.source_class` find theirs by. Above the parts' torch-free declarations
(`vaelab.models.capabilities`, `vaelab.models.schedules`), whose translations it chains."""

import contextlib
from typing import Any

from omegaconf import OmegaConf

from vaelab.config import config_dir
from vaelab.errors import ConfigError
from vaelab.models.capabilities import model_node, translate_old_config
from vaelab.models.schedules import schedule_node


def option_source(name: str) -> str:
    """The source class vaelab's data option `name` names: how the runs made before
    `data.source_class` existed, whose config.yaml gives only `data.name`, find theirs.

    Raises:
        ConfigError: `name` is not one of vaelab's data options.
    """
    folder = config_dir() / "data"
    option = folder / f"{name}.yaml"
    if not option.is_file():
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"Unknown dataset {name!r}; choose one of {', '.join(names)}")
    return OmegaConf.load(option).source_class


# Classes that moved, by the import path that the runs made before the move name them by.
MOVED = {"vaelab.datamodule.VAEDataModule": "vaelab.data.datamodule.VAEDataModule"}


def current_form(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config in today's form: an old `beta_schedule: {kind: ...}` (or none) as its
    `_target_` node (`schedules.schedule_node`), an old `model.arch` as the model's class
    (`capabilities.model_node`), a `_target_` of a class that moved (`MOVED`) by its path
    today, and a data node without `source_class` (runs made before it) with its option's
    (`option_source`), and an old `likelihood: <option>` with a top-level `obs_scale` as the
    likelihood's node (`capabilities.translate_old_config`), and a trainer node without
    `steps_per_call` (runs made before it) with today's default. Run.config() gives every
    run's config in this form."""
    config = translate_old_config(dict(config))
    if "beta_schedule" in config or "beta" in config:  # a training run's, not an eval's
        config["beta_schedule"] = schedule_node(config.get("beta_schedule"))
        trainer = config.get("trainer")
        if isinstance(trainer, dict) and "steps_per_call" not in trainer:
            # Trained one step per call of Lightning's loop, which is the same run as the
            # default's groups of steps (LitVAE.steps_per_call), so today's default.
            config["trainer"] = {**trainer, "steps_per_call": "auto"}
    if isinstance(config.get("model"), dict):
        # An arch vaelab never had is left as it is: building the model says so.
        with contextlib.suppress(ConfigError):
            config["model"] = model_node(config["model"])
    data = config.get("data")
    if isinstance(data, dict) and data.get("_target_") in MOVED:
        data = config["data"] = {**data, "_target_": MOVED[data["_target_"]]}
    if isinstance(data, dict) and data.get("source_class") is None and data.get("name"):
        # An option vaelab no longer has is left as it is: loading its data says so.
        with contextlib.suppress(ConfigError):
            config["data"] = {**data, "source_class": option_source(data["name"])}
    return config
