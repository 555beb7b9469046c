"""The devices of a run: refused before anything is made when this machine lacks what
`trainer.accelerator` and `trainer.devices` ask for; DDP processes on CPU cores said in
one line where the config does not say so.

Importing this module imports neither torch nor Lightning; the check imports them only
for an accelerator other than cpu and auto.
"""

import logging
import os
from collections.abc import Mapping
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vaelab.config.checks import ConfigRejected
from vaelab.errors import ConfigError

log = logging.getLogger(__name__)

# Lightning's accelerator names of a device other than the CPU, with the accelerators they
# take: "gpu" is whichever GPU the machine has, MPS first (Lightning's own order).
_DEVICES = {"gpu": ("mps", "cuda"), "cuda": ("cuda",), "mps": ("mps",), "tpu": ("tpu",)}
_NAMES = {"gpu": "GPU", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)", "tpu": "TPU"}


def check_available(trainer: Mapping[str, Any]) -> None:
    """Check that this machine has the devices a `trainer` node asks for.

    Raises:
        ConfigError: `trainer.accelerator` names a device this machine does not have, or
            `trainer.devices` is more of them than it has.
    """
    name = trainer.get("accelerator")
    if name not in _DEVICES:  # cpu; auto, which falls back to the CPU; a name Lightning refuses
        return
    from lightning.pytorch.accelerators import AcceleratorRegistry

    found = [
        accelerator
        for accelerator in (AcceleratorRegistry[a]["accelerator"] for a in _DEVICES[name])
        if accelerator.is_available()
    ]
    if not found:
        raise ConfigError(
            f"trainer.accelerator={name} but no {_NAMES[name]} is available ({_why_none(name)}): "
            "use trainer=cpu, or trainer.accelerator=auto (a GPU where there is one, else the CPU)"
        )
    devices, count = trainer.get("devices"), found[0].auto_device_count()
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > count:
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {count} {_NAMES[name]}"
            f"{'s' if count > 1 else ''}: use trainer.devices={count} or fewer"
        )


def _why_none(name: str) -> str:
    import torch

    if name == "tpu":
        return "torch_xla finds no TPU"
    if name == "mps":
        return "torch.backends.mps.is_available() is false"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = "" if visible is None else f", CUDA_VISIBLE_DEVICES={visible!r}"
    return f"torch {torch.__version__} finds no CUDA device{hidden}"


class CheckDevicesBeforeRun(Callback):
    """Refuses a single run whose devices this machine lacks, before Hydra makes its
    directory. Not a multirun: its jobs may run on other machines (SLURM), so each job
    checks its own (vaelab.cli). Registered in `hydra.callbacks`, after the validation."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_available(config.get("trainer") or {})
        except ConfigError as e:
            raise ConfigRejected(e) from e


def warn_about_cpu_processes(trainer: Any, requested: Mapping[str, Any]) -> None:
    """Warn, one line each, where the Trainer Lightning built from a `trainer` node runs
    DDP processes on CPU cores without the node saying so (`auto` on a machine without a
    GPU), and where they are more than the cores."""
    from lightning.pytorch.accelerators import CPUAccelerator

    processes = trainer.num_devices
    if not isinstance(trainer.accelerator, CPUAccelerator) or processes < 2:
        return
    if requested.get("accelerator") != "cpu":
        log.warning("no GPU: DDP runs %d processes on the CPU (gloo)", processes)
    cores = os.cpu_count() or 1
    if processes > cores:
        log.warning(
            "DDP runs %d processes on %d CPU cores: they oversubscribe the cores "
            "(trainer.devices=%d gives each process a core of its own)",
            processes,
            cores,
            cores,
        )
