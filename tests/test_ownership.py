"""A run directory has one owner and a fixed identity: a second `train` or `resume=` of a
run that a live process trains is refused, a dead owner is taken over, evaluations work
beside the owner, and a new run never writes into a directory that holds a run."""

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import cli, job_pid, run_train, start_train, wait_for

from vaelab.runs import Run

# 3 epochs of 40 steps, a checkpoint every 5: long enough for the refused commands.
RUN = (
    "model=mlp",
    "logger=none",
    "batch_size=32",
    "n_importance=0",
    "max_epochs=3",
    "trainer.limit_train_batches=40",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.step_checkpoint.every_n_train_steps=5",
    "callbacks.pictures.every_n_epochs=100",
)
ROOT = Path(__file__).resolve().parents[1]


def train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_train(tmp_path, *overrides, timeout=600)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line of a refused command."""
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("vaelab: error:")
    return line


def files(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `run_dir` with its bytes and modification time."""
    return {
        p.relative_to(run_dir).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_a_second_train_or_resume_of_a_run_in_training_is_refused_naming_its_owner(tmp_path):
    run_dir = tmp_path / "outputs" / "owned"
    proc = start_train(tmp_path, (*RUN, f"hydra.run.dir={run_dir}"), "owner")
    wait_for(proc, run_dir, "checkpoints/last.ckpt")
    pid, config = job_pid(run_dir), (run_dir / "config.yaml").read_bytes()

    for second in (f"resume={run_dir}", f"hydra.run.dir={run_dir}"):
        line = error_line(train(tmp_path, *RUN, second))
        assert f"{run_dir} is being trained by pid {pid} on {socket.gethostname()}" in line
    assert proc.poll() is None, "the run ended before the second commands: lengthen RUN"

    assert proc.wait(timeout=600) == 0, (tmp_path / "owner.err").read_text()[-3000:]
    run = Run(run_dir)  # the first run finished as if alone
    assert run.state == "finished" and run.status()["pid"] == pid
    assert "resumed_at" not in run.status() and (run_dir / "config.yaml").read_bytes() == config
    assert [row["epoch"] for row in run.history()] == [0, 1, 2]
    assert "being trained" not in run.log_file.read_text()
    assert run.owner() is None  # its lock went with it


@pytest.mark.slow
def test_resume_takes_over_a_run_whose_owner_was_killed_and_says_so(tmp_path):
    run_dir = tmp_path / "outputs" / "killed"
    proc = start_train(tmp_path, (*RUN, "max_epochs=1", f"hydra.run.dir={run_dir}"), "killed")
    wait_for(proc, run_dir, "checkpoints/last.ckpt")
    pid = job_pid(run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Run(run_dir).status()["status"] == "running"  # what the dead process left

    result = train(tmp_path, *RUN, "max_epochs=1", f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if "Taking over" in line]
    assert f"Taking over {run_dir} from pid {pid} on {socket.gethostname()}" in line
    assert Run(run_dir).state == "finished"


def test_eval_works_beside_the_owner_of_a_run(trained_run, tmp_path):
    run_dir = Path(shutil.copytree(trained_run, tmp_path / "run", symlinks=True))
    run = Run(run_dir)
    with run.own():  # as a training process holds it
        assert run.owner()["pid"] == os.getpid()
        result = cli(
            "eval.py", f"run_dir={run_dir}", "n_importance=10", "trainer.limit_test_batches=1",
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    assert [e["n_importance"] for e in run.evaluations()] == [10]


def test_a_new_run_in_the_directory_of_a_finished_run_is_refused(trained_run, tmp_path):
    run_dir = Path(shutil.copytree(trained_run, tmp_path / "old", symlinks=True))
    before = files(run_dir)
    tiny = ("model=mlp", "trainer=debug", "logger=none", "batch_size=32", "n_importance=0")

    for where in (f"hydra.run.dir={run_dir}", f"paths.output_dir={run_dir}"):
        line = error_line(train(tmp_path, *tiny, where))
        assert f"{run_dir} holds a run already (finished)" in line
        assert f"resume={run_dir}" in line
    assert files(run_dir) == before  # not one byte, not even Hydra's


def test_a_jobs_config_is_its_runs_config_as_asked_for_not_as_lightning_ran_it(compose, tmp_path):
    """What a sweep started again compares: config.yaml, with status.json's `requested`
    values where Lightning ran another (16-mixed runs as bf16-mixed on a CPU)."""
    from omegaconf import OmegaConf

    from vaelab.jobs import config_difference

    cfg = compose("latent_dim=2", "trainer.precision=16-mixed")
    run = Run(tmp_path / "run")
    run.start(OmegaConf.to_container(cfg, resolve=True))
    ran = compose("latent_dim=2", "trainer.precision=bf16-mixed", "run_name=filled_in")
    run.record_config(OmegaConf.to_container(ran, resolve=True), {"trainer.precision": "16-mixed"})

    assert config_difference(run, cfg) == []
    moved = compose("latent_dim=2", "trainer.precision=16-mixed", f"paths.log_dir={tmp_path}")
    assert config_difference(run, moved) == []  # where it lies is not what it is
    other = compose("latent_dim=3", "trainer.precision=16-mixed")
    assert config_difference(run, other) == ["latent_dim (here: 3, there: 2)"]
