"""logger=csv for real: a run killed part-way and resumed keeps the rows it logged before its
checkpoint and logs those after it once, as the uninterrupted run does."""

import csv
import signal
from pathlib import Path

import pytest
import torch
from conftest import start_train, wait_for

from vaelab.dashboards import RunCSVLogger

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


def test_the_writer_keeps_its_file_open_and_every_saved_row_is_in_it(tmp_path):
    """RunCSVLogger writes rows to metrics.csv kept open between saves: each save's rows are
    in the file at once (a run killed next keeps them); a new column rewrites it with every
    column; after `resume_at` replaced the file, rows go to the new file, not the old one."""
    logger = RunCSVLogger(save_dir=tmp_path, name="csv", version="")
    path = tmp_path / "csv" / "metrics.csv"

    def on_disk() -> list[dict[str, str]]:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))

    for step in range(3):
        logger.log_metrics({"train/loss_step": float(step)}, step=step)
        logger.save()
        assert [r["step"] for r in on_disk()] == [str(s) for s in range(step + 1)]
    assert logger.experiment._file is not None  # kept open between saves
    logger.log_metrics({"val/elbo": -1.5}, step=3)  # a new column
    logger.save()
    assert on_disk()[0] == {"step": "0", "train/loss_step": "0.0", "val/elbo": ""}
    assert on_disk()[3] == {"step": "3", "train/loss_step": "", "val/elbo": "-1.5"}

    logger.resume_at(2)  # a run resumed from the checkpoint of step 2: steps 2, 3 dropped
    logger.log_metrics({"train/loss_step": 20.0}, step=2)
    logger.save()
    assert [(r["step"], r["train/loss_step"]) for r in on_disk()] == [
        ("0", "0.0"), ("1", "1.0"), ("2", "20.0"),
    ]  # fmt: skip
    logger.finalize("success")
    assert logger.experiment._file is None
