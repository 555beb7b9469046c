"""A killed run and its resume, as the resume tests (test_resume, test_topdown_cli) make
them: the run's preset, starting it in the background, waiting for its checkpoint, resuming
it, and the check that a resumed run is the uninterrupted one."""

import signal
import subprocess
from pathlib import Path

import torch
from conftest import run_train, start_train, wait_for

from vaelab.runs import Run

# 2 epochs of 40 steps, a checkpoint every 5 steps, deterministic kernels.
RUN = (
    "model=mlp",
    "logger=none",
    "batch_size=32",
    "n_importance=0",
    "max_epochs=2",
    "trainer.limit_train_batches=40",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.deterministic=true",
    "callbacks.step_checkpoint.every_n_train_steps=5",
    "callbacks.pictures.every_n_epochs=100",
)


def start(tmp_path: Path, name: str, overrides: tuple[str, ...] = RUN):
    """Start a training run in the background; its output goes to <name>.out and .err."""
    run_dir = tmp_path / "outputs" / name
    return start_train(tmp_path, (*overrides, f"hydra.run.dir={run_dir}"), name), run_dir


def stderr(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.err").read_text()


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen) -> None:
    wait_for(proc, run_dir, "checkpoints/last.ckpt")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 80  # no step lost or repeated
    return checkpoint["state_dict"]


def assert_same_run(resumed: Path, full: Path) -> None:
    a, b = weights(resumed), weights(full)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert Run(resumed).metrics()["test/elbo"] == Run(full).metrics()["test/elbo"]
    # One history row per epoch, the rows of the killed attempt replaced.
    assert [row["epoch"] for row in Run(resumed).history()] == [0, 1]
    assert Run(resumed).history()[-1]["val/elbo"] == Run(full).history()[-1]["val/elbo"]


def resume(
    tmp_path: Path, run_dir: Path, overrides: tuple[str, ...] = RUN
) -> subprocess.CompletedProcess:
    return run_train(tmp_path, *overrides, f"resume={run_dir}", timeout=600)


def killed_and_resumed(tmp_path: Path, overrides: tuple[str, ...]) -> tuple[Path, Path]:
    """A run of `overrides` to its end, and the same run SIGKILLed once its first checkpoint
    is written, then resumed to its end: (the resumed run's directory, the uninterrupted's)."""
    proc, full = start(tmp_path, "full", overrides)
    assert proc.wait(timeout=600) == 0, stderr(tmp_path, "full")[-3000:]
    proc, run_dir = start(tmp_path, "killed", overrides)
    wait_for_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = resume(tmp_path, run_dir, overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, full
