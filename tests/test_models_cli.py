"""Every defined prior x posterior x objective trains, tests, evaluates and reloads through
the real command line; the one undefined combination is refused with why."""

import itertools
import json
import math

import pytest
import torch
from conftest import compose_command, options, tiny
from omegaconf import OmegaConf

import vaelab
from vaelab.config import config_dir
from vaelab.models.capabilities import declared
from vaelab.runs import Run

GROUPS = ("prior", "posterior", "objective")


def _node(group: str, option: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(config_dir() / group / f"{option}.yaml"))


def unconditional(group: str) -> list[str]:
    """The group's options, but the parts of a conditional model only (a p(z|y):
    tests/test_conditional.py trains it, and checks that it is refused without a condition)."""
    return [
        o
        for o in options(group)
        if not (group == "prior" and declared(group, _node(group, o)).needs_condition)
    ]


# Every option of each group, as the config groups' files are.
PARTS = tuple(f"{group}={','.join(unconditional(group))}" for group in GROUPS)
RUN = tiny("latent_dim=3", "batch_size=16", "n_importance=4", "data.eval_batch_size=64")


def combinations() -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    """The class names of every combination of the groups' options, and of those the
    composition check refuses: by what the classes declare, a posterior that is not a
    diagonal Gaussian with an objective that needs one."""
    parts = {}
    for group in GROUPS:
        for option in unconditional(group):
            node = _node(group, option)
            parts.setdefault(group, []).append(
                (node["_target_"].rsplit(".", 1)[1], declared(group, node))
            )
    every = set(itertools.product(*parts.values()))
    refused = {
        (prior, posterior, objective)
        for prior, posterior, objective in every
        if objective[1].needs_diagonal_gaussian and not posterior[1].diagonal_gaussian
    }
    return _names(every), _names(refused)


def _names(combinations: set[tuple]) -> set[tuple[str, ...]]:
    return {tuple(name for name, _ in combination) for combination in combinations}


def parts_of(run: Run) -> tuple[str, ...]:
    """The class names of a run's prior, posterior and objective."""
    config = run.config()
    return tuple(
        config[g]["_target_"].rsplit(".", 1)[1] for g in ("prior", "posterior", "objective")
    )


@pytest.mark.slow
def test_every_combination_of_parts_trains_tests_and_reloads(train_cli):
    result = train_cli("-m", *PARTS, *RUN, check=False)
    assert result.returncode == 2, result.output[-3000:]  # the one refused job
    runs = {parts_of(Run(d)): Run(d) for d in result.run_dirs}
    every, refused = combinations()
    assert runs.keys() == every
    failed = {parts: run for parts, run in runs.items() if run.state != "finished"}
    assert failed.keys() == refused, {parts: run.error for parts, run in failed.items()}
    assert ("StandardPrior", "IAFPosterior", "BetaTCObjective") in refused
    for run in failed.values():  # betatc with the flow, under each prior
        assert "needs the per-dimension densities of a diagonal Gaussian" in run.error
    for parts, run in runs.items():
        if parts in failed:
            continue
        metrics = json.loads((run.path / "metrics.json").read_text())
        for key in ("val/elbo", "test/elbo", "test/nll_iwae", "test/nll_naive", "test/ess_iwae"):
            assert math.isfinite(metrics[key]), (parts, key)
        closed = parts[:2] == ("StandardPrior", "GaussianPosterior")
        assert metrics["kl_kind"] == ("closed_form" if closed else "monte_carlo"), parts
        # The KL of one dimension exists only where the KL splits into dimensions.
        assert ("test/kl_dim/0" in metrics) == closed, parts
        if parts[2] == "IwaeObjective":
            assert metrics["val/iwae"] >= metrics["val/elbo"] - 1e-3, parts  # the tighter bound
        if parts[2] == "BetaTCObjective":
            assert {"val/mi", "val/tc", "val/dwkl"} <= metrics.keys()
        vae = vaelab.load_run(run.path)  # without Hydra, from the checkpoint alone
        assert type(vae.prior_model).__name__ == parts[0]
        assert type(vae.posterior_model).__name__ == parts[1]
        x = torch.bernoulli(torch.full((2, 1, 28, 28), 0.3))
        assert vae.encode(x).shape == (2, 3) and vae.sample(4).shape == (4, 1, 28, 28)
        assert (run.path / "pictures" / "test" / "samples.png").is_file()


@pytest.mark.slow
def test_an_iwae_run_can_pick_its_checkpoint_by_its_own_bound(train_cli):
    result = train_cli(*RUN, "objective=iwae", "monitor=val/iwae", "max_epochs=2")
    (run_dir,) = result.run_dirs
    best = torch.load(next((run_dir / "checkpoints").glob("best-*.ckpt")), weights_only=True)
    (state,) = [v for k, v in best["callbacks"].items() if k.startswith("RunCheckpoint")]
    assert state["monitor"] == "val/iwae"
    history = Run(run_dir).history()
    assert state["best_model_score"] == pytest.approx(max(row["val/iwae"] for row in history))


HVAE = ("model=hvae", "model.hidden_dim=16", "model.top_dim=2")


@pytest.mark.slow
def test_the_two_level_model_trains_tests_evaluates_and_reloads_with_every_prior(train_cli):
    """model=hvae under each prior, trained by IWAE (which logs the ELBO too; the ELBO
    objective trains it in test_resume.py; its posterior is its own, and betatc and DReG are
    refused at composition): every downstream figure, per-layer active units, eval.py
    recomputing the test figures exactly, and load_run without Hydra."""
    result = train_cli("-m", PARTS[0], "objective=iwae", *RUN, *HVAE)  # every prior
    assert len(result.run_dirs) == len(unconditional("prior"))
    for run_dir in result.run_dirs:
        run = Run(run_dir)
        parts = parts_of(run)
        assert run.state == "finished", (parts, run.error)
        metrics = json.loads((run.path / "metrics.json").read_text())
        for key in ("val/elbo", "test/elbo", "test/nll_iwae", "test/nll_naive", "test/ess_iwae"):
            assert math.isfinite(metrics[key]), (parts, key)
        assert metrics["kl_kind"] == "monte_carlo"  # no closed form between two levels
        assert "test/kl_dim/0" not in metrics  # the KL does not split into dimensions
        # Active units of z = (z1 of 3, z2 of 2), and of each layer.
        assert metrics["test/active_units"] == (
            metrics["test/active_units_z1"] + metrics["test/active_units_z2"]
        )
        assert (
            0 <= metrics["test/active_units_z1"] <= 3 and 0 <= metrics["test/active_units_z2"] <= 2
        )
        assert metrics["val/iwae"] >= metrics["val/elbo"] - 1e-3, parts
        vae = vaelab.load_run(run.path)
        assert type(vae).__name__ == "HierarchicalVAE" and vae.layers == (("z1", 3), ("z2", 2))
        assert type(vae.prior_model).__name__ == parts[0]
        x = torch.bernoulli(torch.full((2, 1, 28, 28), 0.3))
        assert vae.encode(x).shape == (2, 5) and vae.sample(4).shape == (4, 1, 28, 28)
        assert (run.path / "pictures" / "test" / "samples.png").is_file()

    from vaelab.tasks import evaluate

    vamp_iwae = [
        d for d in result.run_dirs if parts_of(Run(d))[::2] == ("VampPrior", "IwaeObjective")
    ]
    metrics = json.loads((vamp_iwae[0] / "metrics.json").read_text())
    overrides = (f"run_dir={vamp_iwae[0]}", "n_importance=4", "trainer.limit_test_batches=2")
    again = evaluate.run(compose_command("eval", *overrides))
    for key in ("test/elbo", "test/nll_iwae", "test/nll_naive", "test/active_units_z2"):
        assert again[key] == metrics[key], key
