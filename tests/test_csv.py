"""logger=csv for real: a run killed part-way and resumed keeps the rows it logged before its
checkpoint and logs those after it once, as the uninterrupted run does."""

import csv
import signal
from pathlib import Path

import pytest
import torch
from conftest import start_train, wait_for

# 2 epochs of 20 steps, a row every step written at once, a checkpoint every 5 steps.
RUN = (
    "model=mlp",
    "logger=csv",
    "+logger.csv.flush_logs_every_n_steps=1",
    "trainer.log_every_n_steps=1",
    "batch_size=32",
    "n_importance=0",
    "max_epochs=2",
    "trainer.limit_train_batches=20",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.deterministic=true",
    "callbacks.step_checkpoint.every_n_train_steps=5",
    "callbacks.pictures.every_n_epochs=100",
)


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def shape(rows: list[dict[str, str]]) -> list[tuple[str, str, tuple[str, ...]]]:
    """Each row's epoch, step and the metrics it holds."""
    return [(r["epoch"], r["step"], tuple(k for k, v in r.items() if v)) for r in rows]


def train(tmp_path: Path, name: str):
    run_dir = tmp_path / "outputs" / name
    return start_train(tmp_path, (*RUN, f"hydra.run.dir={run_dir}"), name), run_dir


def finish(tmp_path: Path, proc, name: str) -> None:
    assert proc.wait(timeout=600) == 0, (tmp_path / f"{name}.err").read_text()[-3000:]


@pytest.mark.slow
def test_a_killed_and_resumed_run_keeps_its_csv_rows_before_the_checkpoint(tmp_path):
    proc, full = train(tmp_path, "full")
    finish(tmp_path, proc, "full")

    proc, run_dir = train(tmp_path, "killed")
    wait_for(proc, run_dir, "checkpoints/last.ckpt")
    wait_for(proc, run_dir, "csv/metrics.csv")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert any(int(row["step"]) < step for row in rows(run_dir))  # rows resume cannot redo

    proc = start_train(tmp_path, (*RUN, f"resume={run_dir}"), "resumed")
    finish(tmp_path, proc, "resumed")
    resumed, uninterrupted = rows(run_dir), rows(full)
    # The rows before the checkpoint, as the killed process logged them.
    kept = [row for row in uninterrupted if int(row["step"]) < step]
    assert resumed[: len(kept)] == kept
    # Those it logged after the checkpoint replaced by the resumed run's, not doubled: a row
    # for each step and epoch end, as in the uninterrupted run, with the same step values.
    assert shape(resumed) == shape(uninterrupted)
    assert [r["train/loss_step"] for r in resumed] == [r["train/loss_step"] for r in uninterrupted]
