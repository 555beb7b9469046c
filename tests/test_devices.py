"""The devices of a run: a missing GPU refused in one line."""

import pytest
import torch
from lightning.pytorch.accelerators import AcceleratorRegistry

from vaelab import devices
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
