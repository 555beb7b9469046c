"""The `vaelab` command: one-line errors, multiruns that survive a failed job, DDP in a sweep."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY
from omegaconf import OmegaConf

from vaelab.dashboards import name_and_group
from vaelab.runs import find_runs
from vaelab.tasks import compare


def vaelab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "vaelab"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_vaelab_without_a_command_prints_usage(tmp_path):
    result = vaelab(cwd=tmp_path)
    assert result.returncode == 2 and "usage: vaelab {train,eval,sample,compare}" in result.stderr


def test_a_recipe_knob_cannot_be_set_in_the_model_group(train_cli):
    result = train_cli("model.beta=3", *TINY, check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("vaelab: error: Could not override 'model.beta'")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_run_without_a_gpu_stops_in_one_line_before_anything_is_made(train_cli):
    no_gpu = "vaelab: error: trainer.accelerator=gpu but no GPU is available ("
    result = train_cli("model=mlp", "trainer=gpu", check=False)
    assert result.returncode == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(no_gpu) and "use trainer=cpu" in line
    assert not (result.tmp_path / "outputs").exists(), "no run directory, no W&B run"

    # A sweep's jobs may run on other machines: each job checks, and records its failure.
    result = train_cli("-m", "model=mlp", "trainer=gpu", "latent_dim=2,3", check=False)
    assert result.returncode == 2 and "Traceback" not in result.output
    (sweep,) = (result.tmp_path / "outputs" / "multiruns").iterdir()
    runs = find_runs([sweep])
    assert [run.state for run in runs] == ["failed", "failed"]
    assert all(run.error.startswith(no_gpu.removeprefix("vaelab: error: ")) for run in runs)
    assert not list(sweep.rglob("wandb")) and not list(sweep.rglob("*.ckpt"))

    result = vaelab("eval", "trainer.accelerator=gpu", cwd=result.tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(no_gpu)


def test_runs_are_named_by_their_overrides_and_grouped_by_sweep(monkeypatch):
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    cfg = OmegaConf.create({"run_name": None, "group": None})
    name_and_group(cfg, "latent_dim=2", "outputs/multiruns/2026-01-01_00-00-00")
    assert cfg == {"run_name": "latent_dim=2", "group": "2026-01-01_00-00-00"}

    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")  # as `wandb agent` sets it
    cfg = OmegaConf.create({"run_name": "mine", "group": None})
    name_and_group(cfg, "latent_dim=2", None)
    assert cfg == {"run_name": "mine", "group": "sweep-abc123"}


@pytest.mark.slow
def test_a_failed_job_is_recorded_and_the_sweep_goes_on(train_cli):
    result = train_cli("-m", *TINY, "latent_dim=2,0,3", check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("vaelab: error:")]
    assert len(errors) == 1 and "job 1" in errors[0] and "latent_dim must be" in errors[0]

    (sweep,) = (result.tmp_path / "outputs" / "multiruns").iterdir()
    runs = find_runs([sweep])
    assert [run.state for run in runs] == ["finished", "failed", "finished"]
    assert "latent_dim must be a positive integer" in runs[1].error
    for run in (runs[0], runs[2]):
        assert run.metrics()["val/elbo"] < 0 and run.history()[0]["epoch"] == 0

    shown = compare.run([sweep])  # the failed job has its own row, never dropped
    assert sorted(row.status for row in shown.rows) == ["failed", "finished", "finished"]
    assert "| failed" in shown.markdown and "latent_dim must be" in shown.markdown


@pytest.mark.slow
def test_ddp_jobs_inside_a_multirun_train_their_own_config(train_cli):
    result = train_cli(
        "-m",
        *TINY,
        "trainer=ddp",  # replaces TINY's trainer=debug: its limits again
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "latent_dim=2,3",
    )
    # One sweep, two jobs: the DDP processes did not re-run the sweep.
    assert [p.name for p in (result.tmp_path / "outputs").iterdir()] == ["multiruns"]
    (sweep,) = (result.tmp_path / "outputs" / "multiruns").iterdir()
    runs = find_runs([sweep])
    assert [run.state for run in runs] == ["finished", "finished"]
    assert [run.config()["latent_dim"] for run in runs] == [2, 3]
    assert result.output.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2  # a second process per job


@pytest.mark.slow
def test_a_diverging_run_stops_with_one_line_and_keeps_a_finite_checkpoint(train_cli):
    import torch

    result = train_cli(
        *TINY,
        "lr=1e4",  # Adam with this step size overflows the loss within a few steps
        "trainer.detect_anomaly=false",
        "callbacks=default",
        "callbacks.step_checkpoint.every_n_train_steps=1",
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("vaelab: error: the loss is not finite at epoch 0, step")
    assert "lower lr (now 10000)" in line and "gradient_clip_val" in line
    (run,) = find_runs([result.tmp_path / "outputs"])
    assert run.state == "failed" and "not finite" in run.error
    state = torch.load(run.checkpoint("last"), weights_only=True)["state_dict"]
    assert all(torch.isfinite(value).all() for value in state.values())


@pytest.mark.slow
def test_parallel_jobs_share_the_cores_instead_of_oversubscribing_them(train_cli):
    import os

    result = train_cli("-m", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2")
    (sweep,) = (result.tmp_path / "outputs" / "multiruns").iterdir()
    runs = find_runs([sweep])
    assert [run.state for run in runs] == ["finished", "finished"]
    threads = max(1, (os.cpu_count() or 1) // 2)
    for run in runs:
        assert f"2 parallel jobs on {os.cpu_count()} cores: {threads} torch threads per job" in (
            run.log_file.read_text()
        )
