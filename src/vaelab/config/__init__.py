"""The config: where the Hydra configs live, and instantiation that builds only the class a
node may name (a run's config.yaml and checkpoints are data) and keeps vaelab's own errors
whole. Its modules: `rules` (what a value may be), `schemas` (the type and rule of every
knob), `trainer` (the Trainer's arguments) and `checks` (a composed config's checks)."""

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

# The YAML files name their schemas (conf/train.yaml: `schema/train@_here_`): importing
# vaelab.config.schemas registers them, so whoever finds conf/ through `config_dir` can
# compose it.
import vaelab.config.schemas  # noqa: F401
from vaelab.errors import ConfigError, VaelabError
from vaelab.targets import named_class


def config_dir() -> Path:
    """conf/ packaged inside the wheel, else the repository's conf/ (editable install)."""
    packaged = Path(__file__).parents[1] / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "conf"


def _nested_targets(node: Any, key: str) -> Iterator[str]:
    """The keys of the `_target_`s below a node (not its own)."""
    if isinstance(node, DictConfig | ListConfig):  # as written: its values unresolved
        node = OmegaConf.to_container(node, resolve=False)
    items = node.items() if isinstance(node, Mapping) else ()
    if isinstance(node, list):
        items = enumerate(node)
    for name, value in items:
        if isinstance(value, Mapping) and "_target_" in value:
            yield f"{key}.{name}"
        yield from _nested_targets(value, f"{key}.{name}")


def instantiate(cfg: Any, base: type, where: str, /, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` of a node that must name `base` or a subclass of it
    (`named_class`), and holds no other `_target_` below it (nothing else is built from
    it); re-raises our own errors unwrapped.

    Raises:
        ConfigError: the node names something else, or names classes below it.
    """
    named_class(cfg.get("_target_"), base, where)
    nested = next(_nested_targets(cfg, where), None)
    if nested is not None:
        raise ConfigError(
            f"{nested}._target_ names a class inside {where}, which was refused without being "
            f"called: {where} may only name its own class; give {nested} as plain values"
        )
    try:
        return hydra_instantiate(cfg, _convert_="all", **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, VaelabError):
            raise e.__cause__ from None
        raise


def trainer_args(trainer: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """The Trainer's arguments of a `trainer` node, and apart from them vaelab's own keys,
    which Lightning's Trainer has no argument for: `compile` (whether to torch.compile the
    networks) and `steps_per_call` (training steps per call of Lightning's loop), with
    their defaults where the node has none (`eval`'s)."""
    args = OmegaConf.to_container(trainer, resolve=True)
    own = {"compile": bool(args.pop("compile", False))}
    own["steps_per_call"] = args.pop("steps_per_call", "auto")
    return OmegaConf.create(args), own
