"""vaelab: configurable experiments with Variational Autoencoders."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_run"]

if TYPE_CHECKING:
    from vaelab.api import load_run


def __getattr__(name: str) -> Any:
    # Lazy, so that `import vaelab` (and every `vaelab.<module>` import) does not load
    # torch and Lightning, and vaelab.api can import the rest of the package freely.
    if name == "load_run":
        from vaelab.api import load_run

        return load_run
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
