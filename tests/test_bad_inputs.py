"""Bad checkpoints and unwritable folders: one clear line, nothing trained, nothing lost."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

import vaelab
from vaelab.errors import VaelabError

ROOT = Path(__file__).resolve().parents[1]


def truncated_run(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of a real run whose checkpoints were cut short, as by a full disk."""
    run_dir = Path(shutil.copytree(trained_run, tmp_path / "run"))
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        ckpt.write_bytes(ckpt.read_bytes()[:4096])
    return run_dir


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("vaelab: error:")]
    return line


def test_load_run_of_a_truncated_checkpoint_says_so(trained_run, tmp_path):
    run_dir = truncated_run(trained_run, tmp_path)
    with pytest.raises(VaelabError, match=r"is not a readable checkpoint .*truncated or corrupt"):
        vaelab.load_run(run_dir, "last")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(VaelabError, match="is not a readable checkpoint"):
        vaelab.load_run(garbage)


@pytest.mark.slow
def test_eval_and_resume_of_a_truncated_checkpoint_give_one_line(train_cli, trained_run, tmp_path):
    run_dir = truncated_run(trained_run, tmp_path)
    line = one_error_line(
        train_cli(*TINY, f"ckpt_path={run_dir}/checkpoints/last.ckpt", check=False)
    )
    assert "last.ckpt is not a readable checkpoint" in line

    line = one_error_line(train_cli(f"resume={run_dir}", check=False))
    assert "last.ckpt is not a readable checkpoint" in line

    command = [sys.executable, str(ROOT / "eval.py"), f"run_dir={run_dir}", "checkpoint=last"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "last.ckpt is not a readable checkpoint" in one_error_line(result)


@pytest.mark.slow
def test_an_unwritable_run_folder_fails_before_training(train_cli):
    # /sys refuses new files even to root: a real read-only place on Linux.
    result = train_cli(*TINY, "paths.log_dir=/sys/vaelab-outputs", check=False)
    line = one_error_line(result)
    assert "cannot write /sys/vaelab-outputs" in line and "paths.log_dir=" in line
    assert "Epoch 0" not in result.output


class NotData:
    """An object a checkpoint may not hold: unpickling a class runs its module's code."""


def test_a_checkpoint_holding_objects_is_refused_because_loading_them_could_run_code(tmp_path):
    import torch

    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "extra": NotData()}, path)
    with pytest.raises(VaelabError) as info:
        vaelab.load_run(path)
    message = str(info.value)
    assert "was refused: it holds objects other than tensors" in message
    assert "NotData" in message and "could run code" in message
    assert "truncated" not in message and "\n" not in message
