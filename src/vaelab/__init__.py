"""vaelab: configurable experiments with Variational Autoencoders."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_run", "load_runs", "model_batches"]

if TYPE_CHECKING:
    from vaelab.api import load_run, load_runs, model_batches


def __getattr__(name: str) -> Any:
    # Lazy, so that `import vaelab` (and every `vaelab.<module>` import) does not load
    # torch and Lightning, and vaelab.api can import the rest of the package freely.
    if name in ("load_run", "load_runs", "model_batches"):
        from vaelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
