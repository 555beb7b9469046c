"""What a config or a checkpoint names by import path (`_target_`), looked up under one rule:
only a subclass of the class its node builds. Torch-free and schema-free, so that the
composition check, the model's builders and the data sources all use it without a circle."""

import contextlib
from typing import Any

from hydra._internal.utils import _locate
from omegaconf import OmegaConf

from vaelab.errors import ConfigError


def named_class(target: Any, base: type, where: str, key: str = "_target_") -> type:
    """The class `target` names (a `_target_`), if it is `base` or a subclass of it.

    The one check of every class a config or a checkpoint names: a run's files may come
    from someone else, and building what they name must not run code other than a part's.
    The named module is imported to look the name up (code installed on this machine, as a
    user's package of parts); nothing it names is called unless it subclasses `base`.

    Args:
        target: the dotted name, e.g. "vaelab.models.priors.VampPrior".
        base: the class it must be or subclass, e.g. `Prior`.
        where: what names it, for the message, e.g. "prior" or "data".
        key: the key of `where` that holds the name (`data.source_class`'s: "source_class").

    Raises:
        ConfigError: the name cannot be imported, or is not a subclass of `base`.
    """
    expected = f"{base.__module__}.{base.__qualname__}"
    if not target:
        raise ConfigError(f"{where} has no {key}: name a subclass of {expected}")
    try:
        found = _locate(target) if isinstance(target, str) else None
    except ImportError as e:
        cause = e.__cause__ or e
        module = getattr(cause, "name", None) or str(target).split(".")[0]
        raise ConfigError(
            f"{where}.{key} names {target}, which cannot be imported ({cause}): install the "
            f"package that provides the module {module}, or name a subclass of {expected}"
        ) from None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(
            f"{where}.{key} names {target}, which is not a subclass of {expected}, so it "
            "was refused without being called (a config or a checkpoint builds only the "
            f"class its node is for); name a subclass of {expected}, or use a run of "
            "`vaelab train`"
        )
    return found


def option_source(name: str) -> str:
    """The source class vaelab's data option `name` names: how the runs made before
    `data.source_class` existed, whose config.yaml gives only `data.name`, find theirs.

    Raises:
        ConfigError: `name` is not one of vaelab's data options.
    """
    from vaelab.config import config_dir  # which imports this module

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
    likelihood's node (`capabilities.translate_old_config`). Run.config() gives every run's
    config in this form."""
    from vaelab.models.capabilities import model_node, translate_old_config  # imports this
    from vaelab.models.schedules import schedule_node  # imports this module

    config = translate_old_config(dict(config))
    if "beta_schedule" in config or "beta" in config:  # a training run's, not an eval's
        config["beta_schedule"] = schedule_node(config.get("beta_schedule"))
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
