"""Where the Hydra configs live, and instantiation that keeps vaelab's own errors whole."""

from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

# The YAML files name their schemas (conf/train.yaml: `schema/train@_here_`): importing
# vaelab.schema registers them, so whoever finds conf/ through `config_dir` can compose it.
import vaelab.schema  # noqa: F401
from vaelab.errors import VaelabError


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


def trainer_args(trainer: DictConfig) -> tuple[DictConfig, bool]:
    """The Trainer's arguments of a `trainer` node without vaelab's own `compile` key (whether
    to torch.compile the networks: Lightning's Trainer has no such argument), and its value."""
    args = OmegaConf.to_container(trainer, resolve=True)
    compile_networks = bool(args.pop("compile", False))
    return OmegaConf.create(args), compile_networks
