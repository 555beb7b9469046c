"""What a config or a checkpoint names by import path (`_target_`), looked up under one rule:
only a subclass of the class its node builds. Torch-free and schema-free, so that the
composition check, the model's builders and the data sources all use it without a circle."""

from typing import Any

from hydra._internal.utils import _locate

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
