"""Runs survive interruptions: SIGKILL or SIGTERM part-way, then `resume=`, gives the same run."""

import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import cli, job_pid, run_train, start_train, wait_for
from killed import (
    RUN,
    assert_same_run,
    killed_and_resumed,
    resume,
    start,
    stderr,
    wait_for_checkpoint,
    weights,
)

from vaelab.checkpoints import AtomicCheckpointIO
from vaelab.loading import load_run
from vaelab.runs import Run

PAUSE = Path(__file__).parent / "pause"  # the harness that stops a run at a moment


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("full")
    proc, run_dir = start(tmp_path, "full")
    assert proc.wait(timeout=600) == 0, stderr(tmp_path, "full")[-3000:]
    # One "last" file, the newest state: never a last-v1.ckpt beside it.
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names in (["best-epoch000.ckpt", "last.ckpt"], ["best-epoch001.ckpt", "last.ckpt"])
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    return run_dir


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, uninterrupted):
    proc, run_dir = start(tmp_path, "killed")
    wait_for_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Run(run_dir).state == "killed"

    result = resume(tmp_path, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Run(run_dir).state == "finished" and len(Run(run_dir).status()["resumed_at"]) == 1
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["killed"]  # same dir
    assert_same_run(run_dir, uninterrupted)


# The same run with the two-level model (model=hvae), small.
HVAE_RUN = (*RUN, "model=hvae", "model.hidden_dim=32", "latent_dim=4", "model.top_dim=3")


@pytest.mark.slow
def test_a_two_level_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    run_dir, full = killed_and_resumed(tmp_path, HVAE_RUN)
    assert "vae.encoder.bottom_joint.0.linear.weight" in weights(run_dir)  # the two-level nets
    assert_same_run(run_dir, full)


@pytest.mark.slow
def test_a_finished_run_resumed_for_more_epochs_keeps_one_history_row_per_epoch(train_cli):
    """Its last.ckpt is from the end of its last epoch, whose end Lightning runs again on
    resume: that epoch's row is not written a second time (once without metrics)."""
    tiny = ("model=mlp", "logger=none", "trainer=debug", "batch_size=32", "n_importance=0",
            "callbacks.pictures.every_n_epochs=100")  # fmt: skip
    (run_dir,) = train_cli(*tiny, "trainer.max_epochs=2").run_dirs
    first = Run(run_dir).history()
    train_cli(*tiny, f"resume={run_dir}", "trainer.max_epochs=3")
    history = Run(run_dir).history()
    assert [row["epoch"] for row in history] == [0, 1, 2], (first, history)
    assert history[:2] == first and "val/elbo" in history[2]


def saved_steps(run_dir: Path) -> dict[str, int]:
    return {
        p.name: torch.load(p, weights_only=True)["global_step"]
        for p in (run_dir / "checkpoints").glob("*.ckpt")
    }


@pytest.mark.slow
def test_a_kill_after_an_epoch_end_and_a_later_step_checkpoint_resumes_from_the_newest(
    tmp_path, uninterrupted
):
    # Epoch 0 ends at step 40 (best and last checkpoints), the step checkpoint comes at 45:
    # when the two wrote a "last" file each, resume read the epoch end's and lost 5 steps.
    overrides = (*RUN, "callbacks.step_checkpoint.every_n_train_steps=45")
    proc, run_dir = start(tmp_path, "late", overrides)
    (last,) = wait_for(proc, run_dir, "checkpoints/last.ckpt")  # epoch 0's end, step 40
    names = set()
    # The write after the epoch end's (its last.ckpt comes right after the best), at step 45.
    while torch.load(last, weights_only=True)["global_step"] < 45:
        names |= {p.name for p in run_dir.glob("checkpoints/*.ckpt")}
        assert proc.poll() is None, "the run ended before its step checkpoint"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    steps = saved_steps(run_dir)
    assert names | steps.keys() <= {"best-epoch000.ckpt", "last.ckpt"}, steps
    resumed_from = torch.load(Run(run_dir).resume_checkpoint(), weights_only=True)
    assert resumed_from["global_step"] == max(steps.values()) >= 45
    epoch_0_row = (run_dir / "history.jsonl").read_text()

    result = resume(tmp_path, run_dir, overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(run_dir, uninterrupted)
    assert (run_dir / "history.jsonl").read_text().startswith(epoch_0_row)  # not re-run


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_saves_a_checkpoint_exits_non_zero_and_says_how_to_resume(
    tmp_path, uninterrupted, signum
):
    proc, run_dir = start(tmp_path, "preempted")
    wait_for_checkpoint(run_dir, proc)
    proc.send_signal(signum)  # SIGINT: what Ctrl+C sends
    assert proc.wait(timeout=300) == 128 + signum
    err = stderr(tmp_path, "preempted")
    (line,) = [line for line in err.splitlines() if line.startswith("vaelab: error:")]
    assert f"stopped by {signal.Signals(signum).name}" in line and f"resume={run_dir}" in line
    assert Run(run_dir).state == "interrupted"

    result = resume(tmp_path, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(run_dir, uninterrupted)


@pytest.mark.slow
def test_resume_refuses_what_it_cannot_do(train_cli, tmp_path):
    run_dir = tmp_path / "outputs" / "runs" / "early"
    Run(run_dir).start({"latent_dim": 2})  # killed before its first checkpoint
    cases = {
        f"resume={run_dir}": "has no checkpoints/last.ckpt",
        f"resume={tmp_path / 'nowhere'}": "not a run directory",
        "resume=last": "has no checkpoints/last.ckpt",  # the newest run
    }
    for override, message in cases.items():
        result = train_cli(*RUN, override, check=False)
        assert result.returncode == 2, result.output[-2000:]
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("vaelab: error:") and message in line


def test_an_interrupted_checkpoint_write_leaves_the_previous_one_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - pickling fails half-way through the write
        io.save_checkpoint({"step": 2, "w": torch.zeros(3), "bad": lambda: 0}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left behind


@pytest.mark.slow
def test_a_killed_offline_wandb_run_keeps_what_it_logged_and_resume_says_it_starts_anew(tmp_path):
    import wandb_files

    slow = (*RUN, "logger=wandb", "model=conv", "max_epochs=6", "trainer.log_every_n_steps=5")
    proc, run_dir = start(tmp_path, "offline", slow)
    wait_for_checkpoint(run_dir, proc)
    time.sleep(2)  # W&B writes its file every second here, every 15 s by default
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    logged = wandb_files.history(wandb_files.read_records(run_file))
    assert any("train/loss_step" in step for step in logged)

    result = run_train(tmp_path, *slow, f"resume={run_dir}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "an offline run cannot be resumed" in result.stdout + result.stderr
    folders = {p.name.rsplit("-", 1)[1] for p in run_dir.glob("wandb/offline-run-*")}
    assert len(folders) == 2  # a new offline run id, so `wandb sync` overwrites nothing
    assert Run(run_dir).wandb()["id"] in folders


@pytest.mark.slow
def test_a_slurm_job_signalled_before_its_time_limit_checkpoints_requeues_and_resumes(tmp_path):
    """submitit's local executor: real processes, real pickles, the signal SLURM would send."""
    overrides = ("-m", "hydra/launcher=submitit_local", *RUN, "max_epochs=6")
    proc = start_train(tmp_path, overrides, "sweep")
    (checkpoint,) = wait_for(proc, tmp_path, "outputs/multiruns/*/0/checkpoints/last.ckpt")
    run_dir = checkpoint.parents[1]
    # What SLURM sends signal_delay_s before the time limit.
    os.kill(job_pid(run_dir), signal.SIGUSR2)
    assert proc.wait(timeout=600) == 0, stderr(tmp_path, "sweep")[-3000:]

    run = Run(run_dir)
    assert run.state == "finished" and len(run.status()["resumed_at"]) == 1
    log = run.log_file.read_text()
    assert "stopped by SIGUSR2" in log and "requeued by submitit" in log
    assert "job 0: resuming the interrupted run" in log
    assert torch.load(run.checkpoint("last"), weights_only=True)["global_step"] == 6 * 40
    assert [row["epoch"] for row in run.history()] == list(range(6))


# 4 epochs of 20 steps at a high lr: val/elbo is best after an epoch before the last, so
# that a checkpoint recording the previous best would test another one. A step checkpoint
# every 7 steps, never at an epoch's end.
BEST_BEFORE_LAST = (
    "model=mlp",
    "model.hidden_dim=32",
    "logger=none",
    "batch_size=32",
    "n_importance=0",
    "max_epochs=4",
    "lr=0.3",
    "trainer.limit_train_batches=20",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.deterministic=true",
    "callbacks.step_checkpoint.every_n_train_steps=7",
    "callbacks.pictures.every_n_epochs=100",
)
STEPS, EVERY = 20, 7
# Where a run is killed, around the epoch b whose end wrote the best checkpoint (the n-th
# best checkpoint written): tests/pause/sitecustomize.py stops the run there (PAUSE_AT),
# the test sends SIGKILL. Hooks count from the sanity check (2 validation batches).
MOMENTS = {
    "training, steps after a step checkpoint": lambda b, n: f"step@{STEPS * b + 13}",
    "validation": lambda b, n: f"on_validation_batch_start@{2 + 2 * b + 2}",
    "writing the best checkpoint": lambda b, n: f"write:best@{n}",
    "writing last.ckpt at the epoch's end": lambda b, n: (
        f"write:last@{STEPS * (b + 1) // EVERY + b + 1}"
    ),
    "between epochs": lambda b, n: f"on_train_epoch_start@{b + 2}",
    "validating the best, after training": lambda b, n: "on_validation_start@6",
    "testing": lambda b, n: "on_test_batch_start@2",
}


@pytest.fixture(scope="module")
def best_before_last(tmp_path_factory) -> tuple[Path, int, int]:
    """The uninterrupted run; the epoch of its best checkpoint, and how many best
    checkpoints it wrote up to that one."""
    tmp_path = tmp_path_factory.mktemp("reference")
    proc, run_dir = start(tmp_path, "reference", BEST_BEFORE_LAST)
    assert proc.wait(timeout=600) == 0, stderr(tmp_path, "reference")[-3000:]
    val = [row["val/elbo"] for row in Run(run_dir).history()]
    # The default: steps grouped in calls of Lightning's loop, which the kills fall between
    # and inside (the moment "training, steps after a step checkpoint").
    assert "Steps: 16 per call of Lightning's loop" in Run(run_dir).log_file.read_text()
    best = val.index(max(val))
    assert len(val) == 4 and best < 3, val
    written = sum(v > max(val[:i], default=-math.inf) for i, v in enumerate(val[: best + 1]))
    return run_dir, best, written


def figures(run_dir: Path) -> dict[str, object]:
    """What a run's figures and choices are: compared bitwise between runs."""
    checkpoints = run_dir / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    (state,) = [s for key, s in last["callbacks"].items() if key.startswith("RunCheckpoint")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "files": sorted(os.listdir(checkpoints)),  # temporary files included
        "last step": last["global_step"],
        "last weights": last["state_dict"],
        "best weights": torch.load(Run(run_dir).checkpoint("best"), weights_only=True)[
            "state_dict"
        ],
        "best named by last.ckpt": (state["best_model_path"], state["best_k_models"]),
        "best read by eval, sample, load_run": Run(run_dir).checkpoint("best").name,
        "tested": metrics["checkpoint"],
        "figures": {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))},
        # the train/* means of the epoch a run resumed in cover only the batches after it
        "history": [
            {k: v for k, v in row.items() if not k.startswith("train/")}
            for row in Run(run_dir).history()
        ],
    }


def assert_equal(a: object, b: object, where: str = "") -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, (where, a, b)


@pytest.mark.slow
@pytest.mark.parametrize("moment", MOMENTS)
def test_a_run_killed_at_any_moment_resumes_to_the_same_checkpoints_and_figures(
    tmp_path, best_before_last, moment
):
    full, epoch, written = best_before_last
    best = f"best-epoch{epoch:03d}.ckpt"
    reference = figures(full)
    assert reference["files"] == [best, "last.ckpt"] and reference["last step"] == 4 * STEPS
    assert reference["best named by last.ckpt"][0] == f"checkpoints/{best}"
    assert reference["tested"]["path"] == f"checkpoints/{best}"

    marker = tmp_path / "paused"
    env = {
        "PAUSE_AT": MOMENTS[moment](epoch, written),
        "PAUSE_MARKER": str(marker),
        "PYTHONPATH": os.pathsep.join([str(PAUSE), os.environ.get("PYTHONPATH", "")]),
    }
    run_dir = tmp_path / "outputs" / "killed"
    proc = start_train(tmp_path, (*BEST_BEFORE_LAST, f"hydra.run.dir={run_dir}"), "killed", env)
    wait_for(proc, tmp_path, marker.name)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Run(run_dir).state == "killed"

    result = resume(tmp_path, run_dir, BEST_BEFORE_LAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Run(run_dir).state == "finished"
    assert "No validation ran during fit" not in result.stdout + result.stderr
    assert_equal(figures(run_dir), reference)


@pytest.mark.slow
def test_a_copied_run_evaluates_samples_loads_and_resumes_from_its_own_files(tmp_path):
    overrides = (*BEST_BEFORE_LAST, "max_epochs=2", "logger=tensorboard")
    proc, original = start(tmp_path, "original", overrides)
    assert proc.wait(timeout=600) == 0, stderr(tmp_path, "original")[-3000:]
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # what still reads or writes it fails or brings it back

    def run(script: str, *args: str) -> None:
        result = cli(script, *args, cwd=tmp_path)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    run("eval.py", f"run_dir={copy}", "n_importance=5", "trainer.limit_test_batches=1")
    best = json.loads((copy / "metrics.json").read_text())["checkpoint"]["path"]
    (evaluation,) = Run(copy).evaluations()
    assert evaluation["ckpt_path"] == best
    assert (copy / "tensorboard").is_dir()  # the evaluation went into the copy's TensorBoard
    run("sample.py", f"run_dir={copy}", "n=4")
    assert (copy / "samples.png").is_file()
    assert load_run(copy).sample(2).shape == (2, 1, 28, 28)

    # As earlier versions wrote it: the checkpoints' state names them by absolute paths.
    last = torch.load(copy / "checkpoints" / "last.ckpt", weights_only=True)
    (key,) = [key for key in last["callbacks"] if key.startswith("RunCheckpoint")]
    state = last["callbacks"][key]
    absolute = {p: str(original / p) for p in [state["best_model_path"], *state["best_k_models"]]}
    state["best_k_models"] = {absolute[p]: v for p, v in state["best_k_models"].items()}
    for name in ("best_model_path", "kth_best_model_path"):
        state[name] = absolute[state[name]]
    state["dirpath"] = str(original / "checkpoints")
    torch.save(last, copy / "checkpoints" / "last.ckpt")

    result = resume(tmp_path, copy, (*overrides, "max_epochs=3"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["epoch"] for row in Run(copy).history()] == [0, 1, 2]
    assert Run(copy).config()["trainer"]["default_root_dir"] == str(copy)
    tested = json.loads((copy / "metrics.json").read_text())["checkpoint"]["path"]
    assert (copy / tested).is_file() and Run(copy).checkpoint("best").name == Path(tested).name
    assert not original.exists(), sorted(str(p) for p in original.rglob("*"))
