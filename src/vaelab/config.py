"""Where the Hydra configs live; instantiation and entry points reporting user errors in a line."""

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate

from vaelab.errors import VaelabError

T = TypeVar("T")


def config_dir() -> Path:
    """conf/ packaged inside the wheel, else the repository's conf/ (editable install)."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


def instantiate(cfg: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` that re-raises our own errors unwrapped."""
    try:
        return hydra_instantiate(cfg, _convert_="all", **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, VaelabError):
            raise e.__cause__ from None
        raise


def run_reporting_errors(task: Callable[[Any], T], cfg: Any) -> T:
    """Run an entry point's task; a `VaelabError` is printed as one line, exit code 2."""
    try:
        return task(cfg)
    except VaelabError as e:
        print(f"vaelab: error: {e}", file=sys.stderr)
        sys.exit(2)
