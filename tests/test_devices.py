"""The devices of a run: a missing GPU refused in one line, and DDP on CPU cores said."""

import logging
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.accelerators import AcceleratorRegistry

from vaelab import devices
from vaelab.config import instantiate, trainer_args
from vaelab.errors import ConfigError

ABSENT = [
    name
    for name, accelerators in {
        "gpu": ("mps", "cuda"),
        "cuda": ("cuda",),
        "mps": ("mps",),
        "tpu": ("tpu",),
    }.items()
    if not any(AcceleratorRegistry[a]["accelerator"].is_available() for a in accelerators)
]


@pytest.mark.parametrize("name", ABSENT)
def test_an_accelerator_this_machine_lacks_is_refused_in_one_line(name):
    with pytest.raises(ConfigError) as info:
        devices.check_available({"accelerator": name, "devices": 1})
    message = str(info.value)
    assert message.startswith(f"trainer.accelerator={name} but no ") and "is available (" in message
    assert "use trainer=cpu" in message and "\n" not in message


@pytest.mark.parametrize("name", ["cpu", "auto"])
def test_the_cpu_and_auto_are_always_available(name):
    devices.check_available({"accelerator": name, "devices": 64})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_more_gpus_than_the_machine_has_are_refused():
    count = torch.cuda.device_count()
    devices.check_available({"accelerator": "gpu", "devices": count})
    with pytest.raises(ConfigError, match=rf"trainer.devices={count + 1} but this machine has"):
        devices.check_available({"accelerator": "gpu", "devices": count + 1})


def _trainer(compose, *overrides):
    cfg = compose(*overrides)
    trainer = instantiate(trainer_args(cfg.trainer)[0], L.Trainer, "trainer", logger=False)
    return trainer, cfg.trainer


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vaelab.devices"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto takes the GPU here")
def test_ddp_on_cpu_cores_without_asking_for_them_is_said_with_its_oversubscription(
    compose, caplog
):
    # The Trainer as `train.py trainer=ddp trainer.devices=<cores + 1>` builds it; its
    # processes start only with fit.
    cores = os.cpu_count() or 1
    trainer, requested = _trainer(compose, "trainer=ddp", f"trainer.devices={cores + 1}")
    with caplog.at_level(logging.WARNING, logger="vaelab.devices"):
        devices.warn_about_cpu_processes(trainer, requested)
    assert _said(caplog) == [
        f"no GPU: DDP runs {cores + 1} processes on the CPU (gloo)",
        f"DDP runs {cores + 1} processes on {cores} CPU cores: they oversubscribe the cores "
        f"(trainer.devices={cores} gives each process a core of its own)",
    ]


def test_ddp_on_the_cpu_asked_for_within_the_cores_says_nothing(compose, caplog):
    cores = os.cpu_count() or 1
    trainer, requested = _trainer(
        compose, "trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={min(2, cores)}"
    )
    with caplog.at_level(logging.WARNING, logger="vaelab.devices"):
        devices.warn_about_cpu_processes(trainer, requested)
    assert _said(caplog) == []
