"""Several training steps per call of Lightning's loop (trainer.steps_per_call): the same run
as one step a call, bit for bit, through every event a run's steps meet; one step a call
where a step needs Lightning's loop; a resume that changes the number."""

import csv
import signal

import pytest
import torch
from conftest import run_train
from killed import RUN, assert_same_run, resume, start, stderr, wait_for_checkpoint
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.plugins import MixedPrecision
from tiny import tiny_trainer
from torch.amp import GradScaler

from vaelab.callbacks import WeightEMA
from vaelab.checkpoints import StepCheckpoint
from vaelab.errors import ConfigError
from vaelab.lit_module import AUTO_STEPS_PER_CALL, LitVAE
from vaelab.runs import Run

# 2 epochs of 21 batches cut at step 37 (inside the second epoch, not a group's end), a step
# checkpoint every 5 steps and the batch means logged every 3: every place where a group of
# steps must end, or a step must be seen, away from the groups' own ends.
EVENTS = (
    "model=mlp",
    "logger=csv",
    "batch_size=32",
    "n_importance=5",
    "max_epochs=2",
    "trainer.max_steps=37",
    "trainer.limit_train_batches=21",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=3",
    "callbacks.step_checkpoint.every_n_train_steps=5",
    "callbacks.pictures.every_n_epochs=100",
)


def _rows(run_dir) -> list[dict[str, str]]:
    (metrics,) = run_dir.glob("csv/**/metrics.csv")
    with metrics.open() as f:
        return list(csv.DictReader(f))


def _same_weights(a_dir, b_dir, name: str = "last.ckpt") -> int:
    a = torch.load(a_dir / "checkpoints" / name, weights_only=True)
    b = torch.load(b_dir / "checkpoints" / name, weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), (name, key)
    assert a["global_step"] == b["global_step"]
    return a["global_step"]


def test_steps_grouped_in_calls_give_the_run_of_one_step_a_call(tmp_path):
    runs = {}
    for steps in ("1", "auto"):
        run_dir = tmp_path / "outputs" / steps
        result = run_train(
            tmp_path, *EVENTS, f"trainer.steps_per_call={steps}", f"hydra.run.dir={run_dir}"
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs[steps] = run_dir
    log = Run(runs["auto"]).log_file.read_text()
    assert f"Steps: {AUTO_STEPS_PER_CALL} per call of Lightning's loop" in log
    assert "Steps: one per call" in Run(runs["1"]).log_file.read_text()

    one, grouped = runs["1"], runs["auto"]
    names = sorted(p.name for p in (one / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (grouped / "checkpoints").iterdir())
    assert "last.ckpt" in names and len(names) == 2
    for name in names:
        _same_weights(one, grouped, name)
        # The data's position and Lightning's count of batches: a resume starts alike.
        a, b = (torch.load(r / "checkpoints" / name, weights_only=True) for r in (one, grouped))
        progress = "epoch_loop.batch_progress"
        assert a["loops"]["fit_loop"][progress] == b["loops"]["fit_loop"][progress]
    assert _same_weights(one, grouped) == 37
    assert Run(one).history() == Run(grouped).history()
    assert Run(one).metrics() == Run(grouped).metrics()
    # Every logged row at its step: the batch means every 3 steps, the epochs' figures.
    assert _rows(one) == _rows(grouped)
    steps = [int(row["step"]) for row in _rows(grouped) if row["train/loss_step"]]
    assert steps == list(range(2, 37, 3))


def test_ddp_steps_grouped_in_calls_give_the_ddp_run_of_one_step_a_call(tmp_path):
    """Two CPU processes (gloo): each grouped step's gradients are reduced across them as
    Lightning's step reduces them (a process training on its own shard alone would end with
    other weights)."""
    runs = {}
    for steps in ("1", "auto"):
        run_dir = tmp_path / "outputs" / steps
        result = run_train(
            tmp_path,
            *RUN[:5],
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "trainer.limit_train_batches=11",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
            "callbacks.pictures.every_n_epochs=100",
            f"trainer.steps_per_call={steps}",
            f"hydra.run.dir={run_dir}",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs[steps] = run_dir
    assert f"Steps: {AUTO_STEPS_PER_CALL} per call" in Run(runs["auto"]).log_file.read_text()
    assert _same_weights(runs["1"], runs["auto"]) == 22
    assert Run(runs["1"]).metrics() == Run(runs["auto"]).metrics()


@pytest.mark.parametrize(("killed", "resumed"), [("1", "auto"), ("auto", "1")])
def test_a_run_resumes_with_another_number_of_steps_per_call(tmp_path, killed, resumed):
    """Killed inside an epoch with one number of steps per call, resumed with the other (a
    run of an earlier vaelab, one step a call, resumes with groups): the uninterrupted run."""
    proc, full = start(tmp_path, "full", (*RUN, "trainer.steps_per_call=auto"))
    assert proc.wait(timeout=600) == 0, stderr(tmp_path, "full")[-3000:]
    proc, run_dir = start(tmp_path, "killed", (*RUN, f"trainer.steps_per_call={killed}"))
    wait_for_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] < 40
    result = resume(tmp_path, run_dir, (*RUN, f"trainer.steps_per_call={resumed}"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(run_dir, full)


def _chosen(tmp_path, steps_per_call, **trainer_args) -> LitVAE:
    """A module whose steps per call were chosen for a fit of `trainer_args`."""
    module = LitVAE(model={"_target_": "vaelab.models.architectures.MLPVAE"}, latent_dim=2)
    module.steps_per_call = steps_per_call
    module.trainer = tiny_trainer(tmp_path, **trainer_args)
    module.setup("fit")
    return module


@pytest.mark.parametrize(
    ("trainer_args", "why"),
    [
        ({"accumulate_grad_batches": 2}, "trainer.accumulate_grad_batches accumulates"),
        ({"gradient_clip_val": 1.0}, "trainer.gradient_clip_val clips"),
        # As on a GPU (Lightning makes a CPU's 16-mixed bf16-mixed, which needs no scaler).
        ({"plugins": [MixedPrecision("16-mixed", "cpu", GradScaler("cpu"))]}, "precision 16-mi"),
        ({"val_check_interval": 5}, "trainer.val_check_interval validates inside an epoch"),
        ({"callbacks": [WeightEMA(decay=0.9)]}, "callback WeightEMA has on_train_batch_end"),
        ({"callbacks": [LearningRateMonitor()]}, "callback LearningRateMonitor has on_train_b"),
    ],
)
def test_what_needs_lightnings_loop_per_step_runs_one_step_a_call(tmp_path, trainer_args, why):
    module = _chosen(tmp_path, "auto", **trainer_args)
    assert module._steps == 1 and module.automatic_optimization
    assert module.why_one_step_per_call().startswith(why)
    with pytest.raises(ConfigError) as info:
        _chosen(tmp_path, 4, **trainer_args)
    message = str(info.value)
    assert message.startswith(f"trainer.steps_per_call=4: {why}") and "\n" not in message
    assert message.endswith("give trainer.steps_per_call=auto or 1")


def test_groups_run_with_callbacks_that_are_fine_with_them(tmp_path):
    """The default callbacks (a moving average switched off, the step checkpoint) and a
    number asked for: manual optimization, the step reading Lightning's iterator."""
    callbacks = [WeightEMA(decay=None), StepCheckpoint(every_n_train_steps=7)]
    module = _chosen(tmp_path, "auto", callbacks=callbacks)
    assert module._steps == AUTO_STEPS_PER_CALL and not module.automatic_optimization
    assert "dataloader_iter" in module.training_step.__code__.co_varnames
    assert _chosen(tmp_path, 3, callbacks=callbacks)._steps == 3
    module = _chosen(tmp_path, 1, callbacks=callbacks)
    assert module._steps == 1 and module.automatic_optimization
    assert "training_step" not in vars(module)
    module.teardown("fit")


def test_a_fit_after_a_grouped_fit_chooses_again(tmp_path):
    module = _chosen(tmp_path, "auto")
    assert module._steps == AUTO_STEPS_PER_CALL
    module.teardown("fit")  # as Lightning ends a fit
    assert module.automatic_optimization and "training_step" not in vars(module)
    module.trainer = tiny_trainer(tmp_path, accumulate_grad_batches=2)
    module.setup("fit")
    assert module._steps == 1 and module.automatic_optimization
