"""model=topdown through the real command line: every defined prior x objective trains,
tests, evaluates (eval.py), reloads (load_run) and resumes; a run killed part-way with the
weights' moving average and update skipping on resumes to the same run; the update skipping
and the moving average do what they say; the undefined combinations are refused in one line."""

import json
import math

import pytest
import torch
from conftest import cli, tiny
from killed import RUN as RESUME_RUN
from killed import assert_same_run, killed_and_resumed

import vaelab
from vaelab.runs import Run

TOPDOWN = ("model=topdown", "model.hidden_dim=16", "model.depth=2")
RUN = tiny("latent_dim=3", "batch_size=16", "n_importance=4", "data.eval_batch_size=64")


# The runs that eval.py evaluates and that resume: every prior x objective.
AGAIN = tuple(
    (prior, objective)
    for prior in ("StandardPrior", "MixturePrior", "VampPrior")
    for objective in ("ElboObjective", "IwaeObjective")
)


@pytest.mark.slow
def test_every_prior_and_objective_trains_tests_evaluates_reloads_and_resumes(train_cli, tmp_path):
    """All six combinations train and test in one multirun (one process), reload and
    compare; each is then evaluated by eval.py and resumed for one more epoch (`AGAIN`)."""
    result = train_cli("-m", "prior=standard,mog,vamp", "objective=elbo,iwae", *RUN, *TOPDOWN)
    assert len(result.run_dirs) == 6
    again = []  # the runs of AGAIN, with their metrics
    for run_dir in result.run_dirs:
        run = Run(run_dir)
        config = run.config()
        parts = tuple(config[g]["_target_"].rsplit(".", 1)[1] for g in ("prior", "objective"))
        assert config["model"]["_target_"] == "vaelab.models.topdown.TopDownVAE"
        assert run.state == "finished", (parts, run.error)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for key in ("val/elbo", "test/elbo", "test/nll_iwae", "test/nll_naive", "test/ess_iwae"):
            assert math.isfinite(metrics[key]), (parts, key)
        assert metrics["kl_kind"] == "monte_carlo"  # no closed form across the layers
        # KL and active units per layer: the layers' KLs (Monte Carlo, one draw) add up to
        # about the KL, and the active units exactly.
        assert metrics["test/active_units"] == (
            metrics["test/active_units_z1"] + metrics["test/active_units_z2"]
        )
        layer_kls = metrics["test/kl_z1"] + metrics["test/kl_z2"]
        assert layer_kls == pytest.approx(metrics["test/kl"], rel=0.5, abs=0.5), parts
        if parts[1] == "IwaeObjective":
            assert metrics["val/iwae"] >= metrics["val/elbo"] - 1e-3, parts
        vae = vaelab.load_run(run_dir)  # without Hydra
        assert type(vae).__name__ == "TopDownVAE" and vae.layers == (("z1", 3), ("z2", 3))
        assert type(vae.prior_model).__name__ == parts[0]
        x = torch.bernoulli(torch.full((2, 1, 28, 28), 0.3))
        assert vae.encode(x).shape == (2, 6) and vae.sample(4, temperature=0.7).shape[0] == 4
        assert (run_dir / "pictures" / "test" / "samples.png").is_file()
        assert (run_dir / "pictures" / "test" / "reconstructions_by_layers.png").is_file()
        if parts in AGAIN:
            again.append((run_dir, metrics))
    assert len(again) == len(AGAIN)

    for run_dir, metrics in again:
        evaluated = cli(
            "eval.py", f"run_dir={run_dir}", "n_importance=4", "trainer.limit_test_batches=2",
            cwd=tmp_path / "eval",
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        (record,) = Run(run_dir).evaluations()
        for key in ("test/elbo", "test/nll_iwae", "test/kl_z2", "test/active_units_z1"):
            assert record[key] == metrics[key], (run_dir.name, key)

        more = train_cli(*RUN, *TOPDOWN, f"resume={run_dir}", "trainer.max_epochs=2")
        assert more.returncode == 0
        assert [row["epoch"] for row in Run(run_dir).history()] == [0, 1], run_dir.name

    from vaelab.tasks import compare

    shown = compare.run(result.run_dirs, out_dir=tmp_path / "compare")
    assert len(shown.rows) == 6
    assert all(math.isfinite(row.mean["test/nll_iwae"]) for row in shown.rows)


# test_resume.py's run (2 epochs of 40 steps, a checkpoint every 5) with the hierarchy, the
# moving average of its weights and a skip threshold that the first steps' gradients pass.
EMA_RUN = (
    *RESUME_RUN, *TOPDOWN, "latent_dim=3", "callbacks.ema.decay=0.9",
    "grad_skip_threshold=1000",
)  # fmt: skip


@pytest.mark.slow
def test_a_run_with_the_moving_average_killed_part_way_resumes_to_the_same_run(tmp_path):
    run_dir, full = killed_and_resumed(tmp_path, EMA_RUN)
    assert_same_run(run_dir, full)  # the checkpoint's state_dict: the moving average
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (run_dir, full))
    for key in ("current_model_state", "averaging_state"):  # the raw weights, the count
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["skipped_steps"] == b["skipped_steps"]
    # The average is not the weights: 80 steps of decay 0.9 leave it behind them.
    assert any(
        not torch.equal(a["state_dict"][name], a["current_model_state"][name])
        for name in a["current_model_state"]
    )


@pytest.mark.slow
def test_updates_over_the_threshold_are_skipped_and_counted(train_cli):
    """A threshold below every gradient's norm skips every step: Adam never steps (it has
    no moments), train/skipped_steps counts every step; without one, none is skipped."""
    run = (*RUN, *TOPDOWN, "trainer.limit_train_batches=4")
    (skipped,) = train_cli(*run, "grad_skip_threshold=1e-9").run_dirs
    (taken,) = train_cli(*run).run_dirs
    last = [d / "checkpoints" / "last.ckpt" for d in (skipped, taken)]
    ckpts = [torch.load(path, weights_only=True) for path in last]
    assert [c["global_step"] for c in ckpts] == [4, 4]
    assert ckpts[0]["skipped_steps"] == 4 and ckpts[1]["skipped_steps"] == 0
    assert ckpts[0]["optimizer_states"][0]["state"] == {}
    assert ckpts[1]["optimizer_states"][0]["state"] != {}
    assert Run(skipped).history()[-1]["train/skipped_steps"] == 4
    assert "train/skipped_steps" not in Run(taken).history()[-1]  # off: not logged


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("posterior=iaf",), "the model TopDownVAE has its own posterior"),
        (("objective=betatc",), "needs a diagonal Gaussian q(z|x), and the model TopDownVAE's"),
        (("objective=iwae", "objective.gradient=dreg"), "objective.gradient=dreg needs"),
        (("objective.free_bits=0.5",), "objective.free_bits needs a diagonal Gaussian"),
        (("model.latent_dims=[2,3]", "model.depth=3"), "model.latent_dims has 2 layers"),
        (("model=mlp", "+model.depth=2"), "model.depth is not an argument of MLPVAE"),
        (
            ("model=topdown_conv", "model.activation=gated"),
            "model.activation=gated is not one the networks of the model TopDownConvVAE take",
        ),
        (("callbacks.ema.decay=1.5",), "callbacks.ema.decay must be"),
        (("grad_skip_threshold=-1",), "grad_skip_threshold must be"),
    ],
)
def test_undefined_combinations_are_refused_in_one_line(train_cli, overrides, message):
    model = () if any(o.startswith("model=") for o in overrides) else TOPDOWN
    result = train_cli(*RUN, *model, *overrides, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_convolutional_hierarchy_trains_on_colour_images(train_cli, tmp_path):
    """model=topdown_conv on CIFAR-10's format (files written in test_cifar.py's way), with
    its discretized logistic: bits per sub-pixel, the layers' KLs, its pictures."""
    from cifar_files import write_batches

    write_batches(tmp_path / "data" / "cifar-10-batches-py", per_batch=12)
    run = ("data=cifar10", "model=topdown_conv", "model.hidden_dim=16", "latent_dim=3")
    result = train_cli(*run, "trainer=debug", "logger=none", "batch_size=8", "n_importance=4")
    (run_dir,) = result.run_dirs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["test/bpd_iwae"]) and metrics["test/bpd_iwae"] > 0
    assert {"test/kl_z1", "test/kl_z2", "test/kl_z3"} <= metrics.keys()  # depth 3
    vae = vaelab.load_run(run_dir)
    assert any(type(m).__name__ == "ResidualCell" for m in vae.modules())
    assert vae.sample(2, temperature=0.5).shape == (2, 3, 32, 32)
    assert (run_dir / "pictures" / "test" / "samples_by_temperature.png").is_file()
