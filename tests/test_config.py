"""Every config option composes and instantiates; top-level knobs reach the model; an option
file's values are its class's defaults."""

import inspect
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import options
from lightning.pytorch.loggers import WandbLogger
from omegaconf import OmegaConf

from vaelab import dashboards
from vaelab.callbacks import WarmupEarlyStopping
from vaelab.config import checks, config_dir, instantiate, trainer_args
from vaelab.config.earlier import option_source
from vaelab.data.datamodule import VAEDataModule
from vaelab.data.sources import DataSource, build_source
from vaelab.errors import ConfigError
from vaelab.lit_module import LitVAE
from vaelab.targets import named_class
from vaelab.tasks.train import build_module

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_every_group_has_its_documented_options():
    assert options("model") == ["conv", "hvae", "mlp", "topdown", "topdown_conv"]
    assert options("data") == [
        "celeba", "cifar10", "dsprites", "fashion_mnist", "folder", "mnist", "shapes"
    ]  # fmt: skip
    assert options("trainer") == ["cpu", "ddp", "debug", "default", "gpu"]
    assert options("logger") == ["csv", "mlflow", "none", "tensorboard", "wandb"]


PART_GROUPS = ("model", "prior", "posterior", "objective", "beta_schedule", "likelihood")
# Keys of an option file that are no argument default: a likelihood's `name`, its label.
LABELS = ("_target_", "name")


@pytest.mark.parametrize(
    "option", [f"{group}={name}" for group in PART_GROUPS for name in options(group)]
)
def test_an_option_files_values_are_its_classs_defaults(compose, option):
    """Defaults live once: where a part's class has a default for an argument its option file
    gives, the two are equal (an interpolated value, e.g. ${beta}, as the config resolves
    it); an argument without a default has its one value in the YAML. Every key is an
    argument of the class."""
    group, name = option.split("=")
    written = OmegaConf.load(config_dir() / group / f"{name}.yaml")
    resolved = compose(option)[group]
    parameters = inspect.signature(named_class(written._target_, object, group)).parameters
    for key in written:
        assert key in parameters or key == "_target_", f"{option}: {key}"
        if key not in LABELS and parameters[key].default is not inspect.Parameter.empty:
            assert resolved[key] == parameters[key].default, f"{option}: {key}"


@pytest.mark.parametrize("name", options("model"))
def test_model_options_instantiate(compose, name):
    model = build_module(compose(f"model={name}"), (1, 28, 28))
    assert isinstance(model, LitVAE)
    written = OmegaConf.load(config_dir() / "model" / f"{name}.yaml")
    assert model.hparams.model == dict(written)
    assert type(model.vae) is named_class(written._target_, object, "model")


def test_an_argument_no_model_class_takes_is_refused_in_one_line(compose):
    """A model's node takes the arguments of the class it names (a user's model may have its
    own): one that the class does not take is refused by name, with the ones it does."""
    cfg = compose("model=conv", "+model.depth=3")
    checks.validate(cfg)  # the model option's class decides, when it is built
    with pytest.raises(ConfigError, match=r"^model.depth is not an argument of ConvVAE; its "):
        build_module(cfg, (1, 28, 28))


@pytest.mark.parametrize("name", options("data"))
def test_data_options_instantiate(compose, name):
    datamodule = instantiate(compose(f"data={name}").data, L.LightningDataModule, "data")
    assert isinstance(datamodule, VAEDataModule)
    assert datamodule.hparams.name == name
    # the option names the class that reads its data, and it is a DataSource
    source = build_source(datamodule.hparams.source_class, {})
    assert isinstance(source, DataSource) and type(source).__module__ == "vaelab.data.sources"
    assert option_source(name) == datamodule.hparams.source_class  # what an old run's name finds


def test_a_data_source_class_outside_data_source_is_refused_unbuilt(compose):
    cfg = compose("data.source_class=pathlib.Path")
    with pytest.raises(ConfigError, match=r"^data.source_class names pathlib.Path, which is not"):
        instantiate(cfg.data, L.LightningDataModule, "data")


# What each data option brings to the top level: 8-bit images their 256 levels and a
# likelihood of them; binary ones (or MNIST's grey levels, drawn) the Bernoulli.
DATA_DEFAULTS = {
    "celeba": ("discretized_logistic", "none"),
    "cifar10": ("discretized_logistic", "none"),
    "dsprites": ("bernoulli", "static"),
    "fashion_mnist": ("bernoulli", "dynamic"),
    "folder": ("discretized_logistic", "none"),
    "mnist": ("bernoulli", "dynamic"),
    "shapes": ("bernoulli", "static"),
}


@pytest.mark.parametrize("name", options("data"))
def test_each_data_option_brings_the_likelihood_and_binarization_that_suit_it(compose, name):
    cfg = compose(f"data={name}")
    assert (cfg.likelihood.name, cfg.data.binarize) == DATA_DEFAULTS[name]
    checks.check_likelihood(cfg.likelihood, cfg.data.binarize)  # a pair that runs


def test_an_explicit_likelihood_or_binarization_wins_over_the_datas(compose):
    cfg = compose("data=cifar10", "likelihood=gaussian")
    assert (cfg.likelihood.name, cfg.data.binarize) == ("gaussian", "none")
    cfg = compose("data=cifar10", "likelihood=logistic_mixture", "likelihood.components=5")
    assert (cfg.likelihood.name, cfg.likelihood.components) == ("logistic_mixture", 5)
    cfg = compose("data=folder", "data.binarize=dynamic", "likelihood=bernoulli")
    assert (cfg.likelihood.name, cfg.data.binarize) == ("bernoulli", "dynamic")
    # and an experiment, composed after the data, wins too
    cfg = compose("data=cifar10", "experiment=beta_vae")
    assert cfg.likelihood.name == "discretized_logistic" and cfg.beta == 4.0


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options_instantiate(compose, name):
    # No GPU here: the gpu option is checked for what it asks, then built on the CPU.
    cfg = compose(f"trainer={name}")
    if name == "gpu":
        assert cfg.trainer.accelerator == "gpu"
        cfg.trainer.accelerator = "cpu"
    args, own = trainer_args(cfg.trainer)
    assert own == {"compile": False, "steps_per_call": "auto"}
    assert "compile" in cfg.trainer and "compile" not in args and "steps_per_call" not in args
    trainer = instantiate(args, L.Trainer, "trainer")
    assert isinstance(trainer, L.Trainer)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    if name == "ddp":
        assert trainer.num_devices == 2
        assert type(trainer.strategy).__name__ == "DDPStrategy"


def test_any_argument_of_lightnings_trainer_reaches_it(compose):
    cfg = compose(
        "trainer.max_steps=10",
        "trainer.accumulate_grad_batches=2",
        "trainer.num_sanity_val_steps=0",
    )
    trainer = instantiate(trainer_args(cfg.trainer)[0], L.Trainer, "trainer", logger=False)
    assert trainer.max_steps == 10 and trainer.accumulate_grad_batches == 2
    assert trainer.num_sanity_val_steps == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [("wandb", [WandbLogger]), ("csv", [dashboards.RunCSVLogger]), ("none", [])],
)
def test_logger_options_instantiate(compose, name, expected, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    loggers = dashboards.build(compose(f"logger={name}"))
    assert [type(logger) for logger in loggers] == expected
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


@pytest.mark.parametrize("name", options("callbacks"))
def test_callback_options_instantiate(compose, name):
    cfg = compose(f"callbacks={name}")
    callbacks = [instantiate(c, L.Callback, "callbacks") for c in (cfg.callbacks or {}).values()]
    assert all(isinstance(c, L.Callback) for c in callbacks)


def test_top_level_knobs_flow_into_encoder_decoder_and_loss(compose):
    cfg = compose("model=mlp", "latent_dim=2", "beta=4", "num_samples=3", "likelihood=gaussian")
    model = build_module(cfg, (1, 28, 28))
    x = torch.rand(5, 1, 28, 28)
    loc, scale = model.vae.encoder(x)
    assert loc.shape == scale.shape == (5, 2)
    assert model.vae.decoder(loc).shape == (5, 1, 28, 28)
    assert model.hparams.num_samples == 3 and model.vae.likelihood.name == "gaussian"

    torch.manual_seed(0)
    rec, kl = model.vae.elbo_terms(x, num_samples=3)
    torch.manual_seed(0)
    loss = model.training_step((x, torch.zeros(5)), 0)
    torch.testing.assert_close(loss, -(rec - 4 * kl).mean())


def test_resolved_config_has_no_missing_values(compose, tmp_path: Path):
    cfg = compose("model=conv", "latent_dim=16")
    assert cfg.latent_dim == 16
    assert set(cfg.model) == {"_target_", "hidden_dim", "activation"}
    assert compose("model=hvae").model.top_dim is None  # the size of z2: hvae's only
    topdown = compose("model=topdown").model  # its layers: depth of latent_dim, or their sizes
    assert topdown.depth == 3 and topdown.latent_dims is None
    assert cfg.trainer.max_epochs == cfg.max_epochs
    assert cfg.data.batch_size == cfg.batch_size


@pytest.mark.parametrize("name", [o for o in options("experiment") if "/" not in o])
def test_experiment_options_compose_and_instantiate(compose, name):
    cfg = compose(f"experiment={name}")
    assert cfg.group == name
    model = build_module(cfg, (1, 28, 28))
    assert model.hparams.latent_dim == cfg.latent_dim and model.hparams.beta == cfg.beta


def test_burda_experiment_is_the_784_200_200_50_tanh_vae(compose):
    cfg = compose("experiment=burda_vae")
    model = build_module(cfg, (1, 28, 28))
    linears = [m for m in model.vae.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 200),
        (200, 200),
        (200, 100),
    ]
    assert sum(isinstance(m, torch.nn.Tanh) for m in model.vae.decoder.modules()) == 2
    assert cfg.data.binarize == "dynamic" and cfg.data.allow_fallback is False


# The rows of the Exemplar VAE table (conf/experiment/exemplar/): the protocol they share,
# and what each row sets.
EXEMPLAR_PROTOCOL = {
    "data.name": "fashion_mnist",
    "data.binarize": "dynamic",
    "data.val_size": 10_000,
    "likelihood.name": "bernoulli",
    "model.hidden_dim": 300,
    "model.activation": "gated",
    "latent_dim": 40,
    "beta": 1.0,
    "batch_size": 100,
    "data.batch_size": 100,
    "lr": 5e-4,
    "optimizer": "adam_normgrad",
    "kl_warmup_epochs": 100,
    "beta_schedule._target_": "vaelab.models.schedules.LinearWarmup",
    "max_epochs": 2000,
    "trainer.max_epochs": 2000,
    "callbacks.early_stopping.patience": 50,
    "n_importance": 5000,
    "posterior._target_": "vaelab.models.posteriors.GaussianPosterior",
}
PRIORS = "vaelab.models.priors."
MODELS, HVAE = "vaelab.models.architectures.", "vaelab.models.hvae.HierarchicalVAE"
ELBO, IWAE = "vaelab.models.objectives.ElboObjective", "vaelab.models.objectives.IwaeObjective"
EXEMPLAR_ROWS = {
    "vae_gaussian": {
        "model._target_": MODELS + "MLPVAE",
        "prior._target_": PRIORS + "StandardPrior",
    },
    "vae_vamp": {
        "model._target_": MODELS + "MLPVAE",
        "prior._target_": PRIORS + "VampPrior",
        "prior.components": 500,
    },
    "iwae_gaussian": {
        "model._target_": MODELS + "MLPVAE",
        "prior._target_": PRIORS + "StandardPrior",
        "objective._target_": IWAE,
        "objective.k": 5,
        "monitor": "val/iwae",
    },
    "hvae_gaussian": {"model._target_": HVAE, "prior._target_": PRIORS + "StandardPrior"},
    "hvae_vamp": {
        "model._target_": HVAE,
        "prior._target_": PRIORS + "VampPrior",
        "prior.components": 500,
    },
}


def test_the_exemplar_folder_holds_the_rows_and_their_protocol():
    found = {p.stem for p in (config_dir() / "experiment" / "exemplar").glob("*.yaml")}
    assert found == {*EXEMPLAR_ROWS, "protocol"}


@pytest.mark.parametrize("row", EXEMPLAR_ROWS)
def test_each_exemplar_row_sets_the_whole_protocol(compose, row):
    cfg = compose(f"experiment=exemplar/{row}")
    expected = {"objective._target_": ELBO, "monitor": "val/elbo", **EXEMPLAR_PROTOCOL}
    expected.update(EXEMPLAR_ROWS[row])
    assert {key: OmegaConf.select(cfg, key) for key in expected} == expected
    checks.validate(cfg)
    model = build_module(cfg, (1, 28, 28))
    assert model.hparams.optimizer == "adam_normgrad" and model.hparams.kl_warmup_epochs == 100
    (stopping,) = [
        c
        for c in (instantiate(c, L.Callback, "callbacks") for c in cfg.callbacks.values())
        if isinstance(c, WarmupEarlyStopping)
    ]
    assert (stopping.patience, stopping.monitor, stopping.enabled) == (50, cfg.monitor, True)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_the_exemplar_protocol_splits_fashion_mnist_50000_10000(compose):
    datamodule = instantiate(
        compose("experiment=exemplar/vae_gaussian").data, L.LightningDataModule, "data"
    )
    datamodule.setup("fit")
    hp = datamodule.hparams
    assert (hp.n_train, hp.n_val, hp.n_test) == (50_000, 10_000, 10_000)
    assert hp.source == "fallback:debian-fashion-mnist"
