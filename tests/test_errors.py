"""Bad input stops before training with one clear line and a non-zero exit."""

import pytest

CASES = {
    "unknown model": (["model=resnet"], "Available options in 'model'"),
    "unknown prior": (["prior=flow"], "Available options in 'prior'"),
    "no such combination": (["posterior=iaf", "objective=betatc"], "use posterior=gaussian"),
    "unknown data": (["data=cifar"], "Available options in 'data'"),
    "unknown logger": (["logger=comet"], "Available options in 'logger'"),
    "latent_dim": (["latent_dim=0"], "latent_dim must be a positive integer"),
    "beta": (["beta=-1"], "beta must be a number >= 0"),
    "num_samples": (["num_samples=0"], "num_samples"),
    "likelihood": (["likelihood=poisson"], "Available options in 'likelihood'"),
    "obs_scale": (["obs_scale=0.05"], "obs_scale is now the likelihood's: use likelihood."),
    "wrong type": (["latent_dim=abc"], "could not be converted to Integer"),
    "misspelt key": (["latnet_dim=4"], "did you mean latent_dim?"),
    "bernoulli on grey": (["data.binarize=none"], "needs binary pixels"),
    "missing data": (["data.allow_fallback=false"], "data.allow_fallback"),
    "no validation split": (["data.val_fraction=0"], "data.val_fraction must be a number in (0,"),
    "an empty validation split": (["data.val_fraction=0.0001"], "holds out no image of the"),
    "a file as the data folder": (["data.data_dir=/proc/version"], "is a file, not a folder"),
    "no training split": (["data.val_size=100000"], "data.val_size=100000 leaves no training"),
    "steps per call": (["trainer.steps_per_call=0"], "trainer.steps_per_call must be a positive"),
    "steps per call that need a call each": (
        ["trainer.accumulate_grad_batches=2", "trainer.steps_per_call=4"],
        "trainer.steps_per_call=4: trainer.accumulate_grad_batches accumulates",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_with_one_clear_line(train_cli, case):
    overrides, message = CASES[case]
    result = train_cli("model=mlp", "trainer=debug", "logger=none", *overrides, check=False)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("vaelab: error:")]
    assert message in line, result.stderr
    assert "Traceback" not in result.output
    assert not list(result.tmp_path.rglob("*.ckpt")), "training must not start"
