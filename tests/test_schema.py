"""The config schema: types refused at composition, values by `validate`, one line from the
command before torch is imported, and every config option valid."""

import dataclasses
import inspect
import json
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from conftest import compose_command, option_node, options
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from vaelab.config import checks, config_dir, schemas, trainer
from vaelab.errors import ConfigError
from vaelab.models.posteriors import IAFPosterior
from vaelab.models.priors import StandardPrior

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "wandb")


GROUPS = ("model", "likelihood", "data", "trainer", "logger", "callbacks", "paths", "experiment")


@pytest.mark.parametrize(
    "override", [f"{group}={name}" for group in GROUPS for name in options(group)]
)
def test_every_config_option_composes_and_validates(compose, override):
    cfg = compose(override)
    checks.validate(cfg)
    assert isinstance(cfg.latent_dim, int) and isinstance(cfg.beta, float)


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_eval_and_sample_configs_compose_and_validate(command):
    checks.validate(compose_command(command), command)


@pytest.mark.parametrize("command", ["train", "eval", "sample"])
def test_every_rule_names_a_key_of_the_config(compose, command):
    if command == "train":  # a model part's keys are in one of its options
        cfgs = [compose(), *(compose(option) for option in PART_OPTIONS)]
    else:
        cfgs = [compose_command(command)]
    for key in schemas.RULES[command]:
        assert any(OmegaConf.select(cfg, key, default="absent") != "absent" for cfg in cfgs), key


# Every option of the groups whose nodes' keys differ by option, as the groups' files are.
PART_OPTIONS = [
    f"{group}={option}"
    for group in (
        "model",
        "prior",
        "posterior",
        "objective",
        "beta_schedule",
        "condition",
        "data",
        "likelihood",
    )
    for option in options(group)
]


# Trainer arguments vaelab builds itself: the loggers, callbacks and plugins of conf/.
BUILT_BY_VAELAB = ("logger", "callbacks", "plugins")
VAELAB_TRAINER_KEYS = ("_target_", "compile", "steps_per_call")


def _types(annotation: object) -> set:
    """The types an annotation allows; a Literal's by the types of its values."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {type(value) for value in typing.get_args(annotation)}
    if origin in (typing.Union, types.UnionType):
        return set().union(*map(_types, typing.get_args(annotation)))
    return {origin or annotation}


def test_the_trainer_node_takes_every_argument_of_lightnings_trainer_with_its_default():
    # A Lightning upgrade that adds, drops or changes an argument fails here.
    from lightning.pytorch import Trainer

    lightning = {
        name: parameter
        for name, parameter in inspect.signature(Trainer).parameters.items()
        if name not in BUILT_BY_VAELAB
    }
    fields = {
        field.name: field
        for field in dataclasses.fields(trainer.TrainerConfig)
        if field.name not in VAELAB_TRAINER_KEYS
    }
    assert {name: field.default for name, field in fields.items()} == {
        name: parameter.default for name, parameter in lightning.items()
    }
    for name, field in fields.items():  # a type OmegaConf checks is one Lightning takes
        if field.type is not typing.Any:
            assert _types(field.type) <= _types(lightning[name].annotation), name


def test_the_eval_trainer_node_is_part_of_the_trainer_node(compose):
    train_keys = set(compose().trainer)
    eval_trainer = compose_command("eval").trainer
    assert set(eval_trainer) == set(trainer.EVAL_TRAINER_KEYS) < train_keys


def test_the_builders_know_every_name_the_schema_allows_and_no_other():
    """The schema's lists are the only lists; where a builder maps names to code, the map's
    names are the list's, and every name builds."""
    import torch

    from vaelab import likelihoods, models
    from vaelab.models.encoders import GATED

    # A dict of nn.Module classes, and the gated layer.
    assert (*models.ACTIVATIONS, GATED) == schemas.ACTIVATIONS
    from vaelab.models.capabilities import declared

    for option in (config_dir() / "model").glob("*.yaml"):
        node = {**OmegaConf.to_container(OmegaConf.load(option)), "hidden_dim": 8}
        for activation in declared("model", node).activations:  # what validate lets through
            node["activation"] = activation
            vae = models.build_vae(node, (1, 28, 28), 2, "bernoulli", 0.1)
            assert vae.decode(torch.zeros(1, vae.latent_dim)).shape == (1, 1, 28, 28)
    x = torch.zeros(2, 1, 4, 4)
    for name in options("likelihood"):  # the group is the list
        likelihood = models.build_likelihood(option_node("likelihood", name))
        assert isinstance(likelihood, likelihoods.Likelihood) and likelihood.name == name
        params = torch.zeros(2, *likelihood.param_shape((1, 4, 4)))
        p_x = likelihood.observation(params, 3, log_scale=torch.zeros(1, 4, 4))
        assert p_x.log_prob(x).shape == (2,)


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("latent_dim=abc", "latent_dim", "Integer"),
        ("latent_dim=2.5", "latent_dim", "Integer"),
        ("beta=x", "beta", "Float"),
        ("data.download=maybe", "data.download", "bool"),
        ("callbacks.pictures.n_images=many", "callbacks.pictures.n_images", "Integer"),
        ("latnet_dim=4", "latnet_dim", "not in 'TrainConfig'"),
        ("data.batchsize=4", "data.batchsize", "not in 'DataConfig'"),
        ("trainer.max_step=10", "trainer.max_step", "not in 'TrainerConfig'"),
        ("trainer.max_steps=abc", "trainer.max_steps", "Integer"),
        # typing prints a Union in the order of the first equal Union the process made.
        (
            "trainer.limit_val_batches=all",
            "trainer.limit_val_batches",
            ("Union[int, float]", "Union[float, int]"),
        ),
    ],
)
def test_wrong_types_and_unknown_keys_are_refused_at_composition(compose, override, key, expected):
    with pytest.raises(ConfigCompositionException) as info:
        compose(override)
    cause = info.value.__cause__
    alternatives = expected if isinstance(expected, tuple) else (expected,)
    assert cause.full_key == key and any(text in str(cause) for text in alternatives)


def test_eval_refuses_a_trainer_argument_of_training_only():
    with pytest.raises(ConfigCompositionException) as info:
        compose_command("eval", "trainer.max_epochs=3")
    assert "not in 'EvalTrainerConfig'" in str(info.value.__cause__)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("latent_dim=0", "latent_dim must be a positive integer, got 0"),
        ("beta=-1", "beta must be a number >= 0 (1: the ELBO itself), got -1.0"),
        ("beta=inf", "beta must be a number >= 0"),
        ("lr=0", "lr must be a number > 0, got 0.0"),
        ("num_samples=0", "num_samples must be a positive integer"),
        ("n_importance=-1", "n_importance must be an integer >= 0"),
        ("max_epochs=0", "max_epochs must be a positive integer, or -1 (no limit), got 0"),
        ("seed=-1", "seed must be an integer in [0, 4294967295]"),
        ("likelihood=gaussian likelihood.obs_scale=0", "likelihood.obs_scale must be a number > 0"),
        ("likelihood=logistic_mixture likelihood.components=0", "likelihood.components must be"),
        ("obs_scale=0.05", "obs_scale is now the likelihood's: use likelihood.obs_scale=..."),
        ("model._target_=resnet", "model._target_ names resnet, which cannot be imported"),
        ("model.activation=gelu", "model.activation must be one of relu, tanh, gated, got 'ge"),
        ("model=conv model.activation=gated", "model.activation=gated is not one the networks "),
        ("model=hvae model.top_dim=0", "model.top_dim must be a positive integer, or null"),
        ("model=hvae posterior=iaf", "the model HierarchicalVAE has its own posterior"),
        (
            "model=hvae objective=betatc",
            "the objective BetaTCObjective needs a diagonal Gaussian q(z|x), and",
        ),
        (
            "model=hvae objective=iwae objective.gradient=dreg",
            "objective.gradient=dreg needs a diagonal Gaussian q(z|x)",
        ),
        ("model.hidden_dim=0", "model.hidden_dim must be a positive integer"),
        ("data.val_fraction=1.5", "data.val_fraction must be a number in (0, 1) (the validation"),
        ("data.val_fraction=0", "data.val_fraction must be a number in (0, 1) (the validation"),
        ("data.val_size=0", "data.val_size must be a positive integer, or null, got 0"),
        ("callbacks.step_checkpoint.every_n_train_steps=0", "callbacks.step_checkpoint.every_n_"),
        ("callbacks.early_stopping.patience=0", "callbacks.early_stopping.patience must be a posi"),
        ("optimizer=sgd", "optimizer must be one of adam, adam_normgrad, got 'sgd'"),
        ("data.binarize=maybe", "data.binarize must be one of dynamic, static, none"),
        ("batch_size=0", "batch_size must be a positive integer"),
        ("data.eval_batch_size=0", "data.eval_batch_size must be a positive integer"),
        ("callbacks.pictures.every_n_epochs=0", "callbacks.pictures.every_n_epochs must be a"),
        ("callbacks.pictures.traversal_range=0", "callbacks.pictures.traversal_range must be"),
        ("data.binarize=none", "likelihood=bernoulli needs binary pixels but data.binarize=none"),
        ("objective=iwae objective.k=0", "objective.k must be a positive integer (importance"),
        ("prior=vamp prior.components=0", "prior.components must be a positive integer (mixture"),
        ("posterior=iaf posterior.steps=-1", "posterior.steps must be a positive integer (flow"),
        (
            "objective=iwae objective.gradient=reinforce",
            "objective.gradient must be one of standard",
        ),
        ("beta_schedule=cyclical beta_schedule.ratio=0", "beta_schedule.ratio must be a number in"),
        ("posterior=iaf objective=betatc", "the objective BetaTCObjective needs the per-dimension"),
        (
            "posterior=iaf objective=iwae objective.gradient=dreg",
            "objective.gradient=dreg evaluates",
        ),
        (
            "prior=mog objective.free_bits=0.5",
            "objective.free_bits=0.5 needs the KL of each latent dimension, so a factorised",
        ),
        ("monitor=val/iwae", "monitor=val/iwae is logged by objective=iwae only"),
        ("monitor=val/loss", "monitor must be one of val/elbo, val/iwae"),
        ("kl_warmup_epochs=2 beta_schedule=cyclical", "kl_warmup_epochs=2 is the length of beta_"),
        ("+latnet_dim=4", "latnet_dim is not a key of the config; did you mean latent_dim?"),
        ("model.hidden_dim=null", "model.hidden_dim must be a positive integer, got None"),
        (
            "+trainer.max_stepz=3",
            "trainer.max_stepz is not a key of trainer; did you mean trainer.max_steps?",
        ),
        ("batch_size=${oops}", "batch_size: Interpolation key 'oops' not found"),
    ],
)
def test_out_of_range_values_are_refused_with_the_key_and_what_is_allowed(
    compose, override, message
):
    cfg = compose(*override.split())
    with pytest.raises(ConfigError) as info:
        checks.validate(cfg)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_a_value_the_rules_allow_passes_and_absent_groups_are_skipped(compose):
    checks.validate(compose("data.binarize=none", "likelihood=gaussian", "callbacks=none"))
    checks.validate(compose("max_epochs=-1", "data.val_fraction=0.01", "beta=0"))
    checks.validate(compose("data.val_size=10000"))


@pytest.mark.parametrize(
    ("command", "override", "message"),
    [
        ("eval", "checkpoint=worst", "checkpoint must be one of best, last, got 'worst'"),
        ("eval", "n_importance=0", "n_importance must be a positive integer"),
        ("eval", "wandb_mode=on", "wandb_mode must be one of online, offline, disabled, or null"),
        ("eval", "data.eval_batch_size=0", "data.eval_batch_size must be a positive integer"),
        ("sample", "n=0", "n must be a positive integer, got 0"),
        ("sample", "nrow=0", "nrow must be a positive integer"),
    ],
)
def test_eval_and_sample_values_are_checked(command, override, message):
    cfg = compose_command(command, override)
    with pytest.raises(ConfigError, match=re.escape(message)):
        checks.validate(cfg, command)


def test_pictures_built_from_python_use_the_same_rules():
    from vaelab.callbacks import VAEPictures

    with pytest.raises(ConfigError, match=r"callbacks\.pictures\.png_scale must be a positive"):
        VAEPictures(png_scale=0)


# --- the command: one line, exit code 2, nothing written, before torch ----------------


CLI_CASES = {
    "misspelt key": ("latnet_dim=4", "Could not override 'latnet_dim'", "did you mean latent_dim?"),
    "misspelt trainer key": (
        "trainer.max_step=10",
        "Could not override 'trainer.max_step'",
        "did you mean trainer.max_steps?",
    ),
    "not an integer": ("latent_dim=abc", "Error merging override latent_dim=abc", "to Integer"),
    "a float for an int": ("latent_dim=2.5", "Error merging override latent_dim=2.5", "Integer"),
    "not a bool": ("data.download=maybe", "Error merging override data.down", "not a valid bool"),
    "latent_dim": ("latent_dim=0", "latent_dim must be a positive integer", ""),
    "beta": ("beta=-1", "beta must be a number >= 0", ""),
    "lr": ("lr=0", "lr must be a number > 0", ""),
    "num_samples": ("num_samples=0", "num_samples must be a positive integer", ""),
    "val_fraction": ("data.val_fraction=0", "data.val_fraction must be a number in (0, 1)", ""),
    "pictures": ("callbacks.pictures.every_n_epochs=0", "callbacks.pictures.every_n_epochs", ""),
    "likelihood": ("likelihood=poisson", "In 'train': Could not find 'likelihood/", "gaussian"),
    "binarize": ("data.binarize=maybe", "data.binarize must be one of", "dynamic"),
    "arch": ("model._target_=resnet", "model._target_ names resnet, which cannot be", ""),
    "activation": ("model.activation=gelu", "model.activation must be one of relu, tanh", ""),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_command_refuses_a_bad_override_with_one_line_and_writes_nothing(train_cli, case):
    override, start, also = CLI_CASES[case]
    result = train_cli(override, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"vaelab: error: {start}") and also in line, line
    assert not (result.tmp_path / "outputs").exists(), "no run directory, no checkpoint"


def _cli_in_process(tmp_path: Path, *args: str) -> dict:
    """`vaelab ...` in a fresh interpreter: its exit code, and which heavy modules it imported."""
    code = f"""
import json, sys
from vaelab import cli
try:
    cli.main({list(args)!r})
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps({{"code": code, "imported": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout, proc.stderr
    return {**json.loads(proc.stdout.splitlines()[-1]), "stderr": proc.stderr}


@pytest.mark.parametrize(
    "args",
    [
        ("train", "latent_dim=0"),
        ("train", "-m", "latent_dim=0", "model=mlp,conv"),  # before the sweep launches a job
        ("train", "data.binarize=none"),  # the Bernoulli likelihood declares `binary`
        ("train", "likelihood=logistic_mixture", "likelihood.components=0"),
        ("train", "obs_scale=0.05"),
        ("eval", "checkpoint=worst"),
        ("sample", "n=0"),
    ],
)
def test_values_are_refused_before_torch_is_imported(tmp_path, args):
    where = [f"paths.log_dir={tmp_path / 'outputs'}"] if args[0] == "train" else []
    result = _cli_in_process(tmp_path, *args, *where)
    assert result["code"] == 2 and result["imported"] == []
    assert result["stderr"].startswith("vaelab: error: ")
    assert not (tmp_path / "outputs").exists()


def test_the_schema_imports_no_heavy_module():
    code = f"import sys, vaelab.config.checks; print([m for m in {HEAVY!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_a_swept_bad_value_fails_its_own_job_which_is_recorded(train_cli):
    from vaelab.runs import find_runs

    result = train_cli("-m", "latent_dim=0,-1", check=False)
    assert result.returncode == 2 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("vaelab: error:")]
    assert len(errors) == 1 and "job 0" in errors[0] and "latent_dim must be" in errors[0]
    (sweep,) = (result.tmp_path / "outputs" / "multiruns").iterdir()
    runs = find_runs([sweep])
    assert [run.state for run in runs] == ["failed", "failed"]
    assert [run.config()["latent_dim"] for run in runs] == [0, -1]
    assert "latent_dim must be a positive integer, got -1" in runs[1].error
    assert not list(sweep.rglob("*.ckpt"))


class DeeperFlow(IAFPosterior):
    """A user's flow under another class name: a flow by what it declares, not its name."""


class UnitGaussianPrior(StandardPrior):
    """A user's N(0, I) under another class name: factorised, as it declares."""


FLOW = ("posterior=iaf", f"posterior._target_={__name__}.DeeperFlow")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((*FLOW, "objective=betatc"), "the objective BetaTCObjective needs the per-dimension"),
        (
            (*FLOW, "objective=iwae", "objective.gradient=dreg"),
            "objective.gradient=dreg evaluates q(z|x) with its parameters cut",
        ),
        ((*FLOW, "objective.free_bits=1"), "objective.free_bits=1 needs the KL of each latent"),
        ((f"prior._target_={__name__}.UnitGaussianPrior", "objective.free_bits=1"), None),
    ],
)
def test_which_parts_combine_is_what_their_classes_declare(compose, overrides, message):
    """A part combines by what its class declares (factorised, a diagonal Gaussian), not by
    its name: a subclass under another name is refused, or accepted, as it declares."""
    cfg = compose(*overrides)
    if message is None:
        checks.validate(cfg)
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        checks.validate(cfg)


def test_vaelabs_parts_inherit_the_declarations_the_check_reads_without_torch():
    """The composition check reads vaelab's own parts' capabilities from their torch-free
    declarations: each class inherits its entry, and every option file's class has one."""
    from vaelab.models.capabilities import DECLARED
    from vaelab.targets import named_class

    for target, declaration in DECLARED.items():
        assert issubclass(named_class(target, object, "test"), declaration), target
    for group in ("model", "prior", "posterior", "objective", "likelihood"):
        for option in (config_dir() / group).glob("*.yaml"):
            assert OmegaConf.load(option)._target_ in DECLARED, option
    code = (
        "import sys; from omegaconf import OmegaConf; from vaelab.config import checks; "
        "m = 'vaelab.models.'; cfg = OmegaConf.create({"
        "'model': {'_target_': m + 'architectures.ConvVAE', 'activation': 'tanh'}, "
        "'posterior': {'_target_': m + 'posteriors.IAFPosterior'}, "
        "'objective': {'_target_': m + 'objectives.BetaTCObjective'}})\n"
        "try:\n    checks.check_parts(cfg)\nexcept Exception as e:\n    print(e)\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "the objective BetaTCObjective needs the per-dimension densities of a diagonal Gaussian "
        "q(z|x), which the posterior IAFPosterior does not have: use posterior=gaussian",
        "False",
    ]
