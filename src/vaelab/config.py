"""Where the Hydra configs live, and instantiation that builds only the class a node may
name (a run's config.yaml and checkpoints are data) and keeps vaelab's own errors whole."""

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra._internal.utils import _locate
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

# The YAML files name their schemas (conf/train.yaml: `schema/train@_here_`): importing
# vaelab.schema registers them, so whoever finds conf/ through `config_dir` can compose it.
import vaelab.schema  # noqa: F401
from vaelab.errors import ConfigError, VaelabError


def config_dir() -> Path:
    """conf/ packaged inside the wheel, else the repository's conf/ (editable install)."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


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


def trainer_args(trainer: DictConfig) -> tuple[DictConfig, bool]:
    """The Trainer's arguments of a `trainer` node without vaelab's own `compile` key (whether
    to torch.compile the networks: Lightning's Trainer has no such argument), and its value."""
    args = OmegaConf.to_container(trainer, resolve=True)
    compile_networks = bool(args.pop("compile", False))
    return OmegaConf.create(args), compile_networks
