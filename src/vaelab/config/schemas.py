"""The config schema: the type of every knob, and the values each one allows.

Types are Hydra structured configs, so OmegaConf refuses `latent_dim=abc` (or a
misspelt key) while Hydra composes. A value's rule is in its field (`knob`,
`vaelab.config.rules`): `vaelab.config.checks.validate` checks a composed config with the
rules (`RULES`, read from the fields) right after composition, before torch is imported,
and the classes built from Python (LitVAE, the data module, the callbacks, the model
parts) check their arguments with the same rules (`@checked`). The lists of the choices
that are values, not option files (ACTIVATIONS, ...), are here, once.

conf/train.yaml, eval.yaml and sample.yaml start their defaults list with their schema
(`schema/train@_here_`, ...), conf/callbacks/default.yaml with `/schema/pictures@pictures`;
importing this module registers them. A new knob is added to its YAML file and to its
dataclass here, with its rule (the `trainer` node's knobs are Lightning's Trainer
arguments, with Lightning's defaults: `vaelab.config.trainer`). Imports neither torch nor
Lightning nor W&B: a bad value is reported in about a second.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from vaelab.config.rules import (
    BOOLEAN,
    NUM_SAMPLES,
    SEED,
    Rule,
    integer,
    is_int,
    is_number,
    knob,
    noted,
    number,
    one_of,
    or_null,
)
from vaelab.config.trainer import EvalTrainerConfig, TrainerConfig
from vaelab.errors import ConfigError

# The names of every choice: the one list of each, which the builders import. Where a
# builder maps names to code (ACTIVATIONS to nn.Module classes), tests/test_schema.py
# checks that the map has exactly these names.
ACTIVATIONS = ("relu", "tanh", "gated")  # gated: each dense layer a GatedDense
BINARIZATIONS = ("dynamic", "static", "none")
PLACEMENTS = ("auto", "device", "host")
CHECKPOINTS = ("best", "last")
WANDB_MODES = ("online", "offline", "disabled")
GRADIENTS = ("standard", "dreg")  # of objective=iwae
# The validation bound that picks the best checkpoint, that a multirun's job returns to its
# sweeper and whose NaN means divergence (higher is better); runs older than the knob: the first.
MONITORS = ("val/elbo", "val/iwae")
# adam_normgrad: Adam on each parameter's gradient divided by its L2 norm (vae_vampprior's
# AdamNormGrad, which the VampPrior and Exemplar VAE papers train with).
OPTIMIZERS = ("adam", "adam_normgrad")

# --- types and rules: the schemas of the YAML files, whose values come from the YAML files
# A field's rule (`knob`) is the one statement of what its value may be: `validate` checks
# composed configs with it, and `checked` the arguments of the classes built from Python.


@dataclass
class ModelArgs:
    """The rules of the model options' arguments (conf/model: which of them an option takes
    is its class's signature, the YAML gives the values)."""

    hidden_dim: int = knob(integer(1))
    activation: str = knob(one_of(ACTIVATIONS))
    # model=hvae: the size of z₂, the top layer (z₁'s is latent_dim); null: latent_dim.
    top_dim: int | None = knob(or_null(integer(1)))
    # model=topdown(_conv): the number of stochastic layers, each of latent_dim ...
    depth: int | None = knob(or_null(integer(1)))
    # ... or their sizes, z1 (nearest to x) first, which replace depth and latent_dim.
    latent_dims: list[int] | None = knob(
        Rule(
            "a list of positive integers, or null",
            lambda v: v is None or (len(v) > 0 and all(is_int(d) and d >= 1 for d in v)),
        )
    )


@dataclass
class ShapesGridArgs:
    shapes: int = knob(noted(integer(1, 3), "the first of square, ellipse, heart"))
    scales: int = knob(integer(1))
    orientations: int = knob(integer(1))
    positions: int = knob(noted(integer(1), "centres on each axis"))


@dataclass
class DataConfig:
    _target_: str = MISSING
    # The data's label in logs and compare's tables: the option's name.
    name: str = MISSING
    # The `vaelab.data.sources.DataSource` subclass that reads the data, as a dotted name
    # (checked by `vaelab.targets.named_class`); null in runs made before it: `name`'s option.
    source_class: str | None = None
    data_dir: str = MISSING
    batch_size: int = knob(integer(1))
    eval_batch_size: int = knob(integer(1))
    binarize: str = knob(one_of(BINARIZATIONS))
    val_fraction: float = knob(
        noted(
            number(0, above=True, below=1),
            "the validation split picks the best checkpoint and catches divergence",
        )
    )
    # A number of images, which replaces val_fraction (null: val_fraction decides).
    val_size: int | None = knob(or_null(integer(1)))
    seed: int = knob(SEED)
    download: bool = MISSING
    allow_fallback: bool = MISSING
    placement: str = knob(one_of(PLACEMENTS), default="auto")
    # data=shapes, folder and celeba: pixels a side; shapes: how many values each factor
    # takes; folder: the folder of images (null elsewhere).
    image_size: int | None = knob(or_null(integer(8)), default=None)
    path: str | None = None
    grid: dict[str, Any] | None = knob(default=None, nodes={"args": ShapesGridArgs})
    # The source class's own further arguments, by name (a user's source's; vaelab's take
    # none): checked against its constructor when it is built (`data.sources.build_source`).
    source_args: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_dir: str = MISSING
    log_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class PicturesConfig:
    _target_: str = MISSING
    every_n_epochs: int = knob(integer(1))
    n_images: int = knob(integer(1))
    n_interpolations: int = knob(integer(1))
    interpolation_steps: int = knob(integer(2))  # both ends included
    n_traversal_dims: int = knob(integer(1))
    traversal_values: int = knob(integer(2))
    traversal_range: float = knob(number(0, above=True))
    manifold_size: int = knob(integer(1))
    n_scatter: int = knob(integer(1))
    seed: int = knob(SEED)
    nrow: int = knob(integer(1))
    png_scale: int = knob(integer(1))


@dataclass
class EmaConfig:
    decay: float | None = knob(
        noted(or_null(number(0, above=True, below=1)), "the average's weight; null: off")
    )


@dataclass
class EarlyStoppingConfig:
    patience: int | None = knob(
        noted(or_null(integer(1)), "epochs after the KL warm-up; null: off")
    )
    min_delta: float = knob(number(0))


@dataclass
class StepCheckpointConfig:
    every_n_train_steps: int = knob(integer(1))


# The arguments of the model parts, by config group: which of them an option takes is its
# class's signature (the YAML gives the values); the rules hold for every option.


@dataclass
class PriorArgs:
    components: int = knob(noted(integer(1), "mixture components or pseudo-inputs"))


FACTOR_NAMES = Rule(
    "a list of factor names",
    lambda v: isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0,
)


@dataclass
class ConditionArgs:
    # condition=labels on data with factors: the factors' names (null: all of them)
    factors: list[str] | None = knob(or_null(FACTOR_NAMES), default=None)


@dataclass
class PosteriorArgs:
    steps: int = knob(noted(integer(1), "flow steps; posterior=gaussian has none"))
    hidden_dim: int = knob(integer(1))


@dataclass
class ObjectiveArgs:
    num_samples: int = knob(NUM_SAMPLES)
    free_bits: float = knob(noted(number(0), "nats per latent dimension, 0: off"))
    k: int = knob(noted(integer(1), "importance samples per image"))
    gradient: str = knob(one_of(GRADIENTS))
    alpha: float = knob(number(0))
    beta: float = knob(number(0))
    gamma: float = knob(number(0))


@dataclass
class LikelihoodArgs:
    obs_scale: float = knob(
        noted(number(0, above=True), "the Gaussian's standard deviation, a learned scale's start")
    )
    components: int = knob(noted(integer(1), "logistics in each pixel's mixture"))
    coupled: bool = knob(BOOLEAN)


@dataclass
class BetaScheduleArgs:
    cycles: int = knob(integer(1))
    ratio: float = knob(
        Rule(
            "a number in (0, 1] (the fraction of each cycle during which beta rises)",
            lambda v: is_number(v) and 0 < v <= 1,
        )
    )


@dataclass
class DisentanglementConfig:
    num_train: int = knob(noted(integer(1), "rows that fit each disentanglement metric"))
    num_test: int = knob(noted(integer(1), "held-out rows that score it"))
    batch_size: int = knob(noted(integer(2), "images per FactorVAE vote"))
    seed: int = knob(SEED)


@dataclass
class TrainConfig:
    seed: int = knob(SEED)
    latent_dim: int = knob(integer(1))
    beta: float = knob(noted(number(0), "1: the ELBO itself"))
    # Refused when set: it is the likelihood's now (likelihood.obs_scale).
    obs_scale: float | None = None
    num_samples: int = knob(NUM_SAMPLES)
    # a number of epochs, kept as typed
    kl_warmup_epochs: int | float = knob(noted(number(0), "0: no warm-up"))
    lr: float = knob(number(0, above=True))
    optimizer: str = knob(one_of(OPTIMIZERS))
    n_importance: int = knob(noted(integer(0), "0: no test log-likelihood"))
    # Skip an optimizer step whose gradient norm is above this (VDVAE's skip_threshold).
    grad_skip_threshold: float | None = knob(
        noted(or_null(number(0, above=True)), "null: never skip"), default=None
    )
    # The test metrics of data with ground-truth factors (data=shapes): test/mig, ...
    disentanglement: DisentanglementConfig = MISSING
    batch_size: int = knob(integer(1))
    max_epochs: int = knob(
        Rule("a positive integer, or -1 (no limit)", lambda v: is_int(v) and (v >= 1 or v == -1))
    )
    monitor: str = knob(one_of(MONITORS))
    project: str = MISSING
    group: str | None = MISSING
    tags: list[str] = MISSING
    run_name: str | None = MISSING
    resume: str | None = MISSING
    ckpt_path: str | None = MISSING
    # The architecture (conf/model): a `_target_` VAE class and its arguments.
    model: dict[str, Any] = knob(nodes={"args": ModelArgs})
    data: DataConfig = MISSING
    paths: PathsConfig = MISSING
    # A default, not MISSING: OmegaConf 2.3 fails to fill a MISSING node holding Unions.
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    # The model parts (conf/likelihood, prior, posterior, objective, beta_schedule): a
    # `_target_` class and its arguments, whose combinations `check_parts` checks.
    likelihood: dict[str, Any] = knob(nodes={"args": LikelihoodArgs})
    prior: dict[str, Any] = knob(nodes={"args": PriorArgs})
    posterior: dict[str, Any] = knob(nodes={"args": PosteriorArgs})
    objective: dict[str, Any] = knob(nodes={"args": ObjectiveArgs})
    beta_schedule: dict[str, Any] = knob(nodes={"args": BetaScheduleArgs})
    # condition=labels: a conditional VAE (vaelab.models.conditional); none: {}
    condition: dict[str, Any] = knob(nodes={"args": ConditionArgs})
    # Passed to Lightning as they are (Lightning checks them), but for vaelab's own.
    logger: dict[str, Any] = MISSING
    callbacks: dict[str, Any] = knob(
        nodes={
            "pictures": PicturesConfig,
            "step_checkpoint": StepCheckpointConfig,
            "early_stopping": EarlyStoppingConfig,
            "ema": EmaConfig,
        }
    )
    # A cluster's SLURM settings, from a git-ignored conf/local/ (hydra/launcher=slurm).
    slurm: dict[str, Any] | None = None


@dataclass
class EvalDataConfig:
    data_dir: str | None = MISSING
    download: bool | None = MISSING
    eval_batch_size: int | None = knob(or_null(integer(1)))


@dataclass
class EvalConfig:
    run_dir: str | None = MISSING
    ckpt_path: str | None = MISSING
    checkpoint: str = knob(one_of(CHECKPOINTS))
    n_importance: int = knob(integer(1))
    seed: int = knob(SEED)
    wandb_mode: str | None = knob(or_null(one_of(WANDB_MODES)))
    data: EvalDataConfig = MISSING
    trainer: EvalTrainerConfig = dataclasses.field(default_factory=EvalTrainerConfig)


@dataclass
class SampleConfig:
    run_dir: str | None = MISSING
    checkpoint: str = knob(one_of(CHECKPOINTS))
    n: int = knob(integer(1))
    nrow: int = knob(integer(1))
    seed: int = knob(SEED)
    out: str | None = MISSING


SCHEMAS = {"train": TrainConfig, "eval": EvalConfig, "sample": SampleConfig}

_store = ConfigStore.instance()
for _name, _node in SCHEMAS.items():
    _store.store(group="schema", name=_name, node=_node)
_store.store(group="schema", name="pictures", node=PicturesConfig)


def rules(schema: type, prefix: str = "") -> dict[str, Rule]:
    """Key -> rule for every field of `schema` with one, into its typed sub-nodes and the
    `nodes` of its dict fields (the model parts' arguments under their group's key)."""
    found: dict[str, Rule] = {}
    for field in dataclasses.fields(schema):
        key = prefix + field.name
        if field.metadata.get("rule"):
            found[key] = field.metadata["rule"]
        for name, node in field.metadata.get("nodes", {}).items():
            found.update(rules(node, f"{key}." if name == "args" else f"{key}.{name}."))
        if dataclasses.is_dataclass(field.type):
            found.update(rules(field.type, f"{key}."))
    return found


# Per command, key -> rule: read from the schemas' fields, never written here.
RULES: dict[str, dict[str, Rule]] = {command: rules(node) for command, node in SCHEMAS.items()}


def check(values: Mapping[str, Any], prefix: str = "", command: str = "train") -> None:
    """Check values against `RULES[command]`, under their keys `prefix + name`.

    Raises:
        ConfigError: the first value its rule refuses, as "<key> must be <allowed>, got <value>".
    """
    rules = RULES[command]
    for name, value in values.items():
        key = prefix + name
        if not rules[key].ok(value):
            raise ConfigError(f"{key} must be {rules[key].allowed}, got {value!r}")


def check_fields(values: Mapping[str, Any], *prefixes: str, command: str = "train") -> None:
    """Check each value whose key `prefix + name`, for the first of `prefixes` that gives a
    key with a rule, has one; values without a rule are left alone."""
    table = RULES[command]
    for name, value in values.items():
        key = next((p + name for p in prefixes if p + name in table), None)
        if key is not None:
            check({key: value}, command=command)


def checked(*prefixes: str, command: str = "train") -> Callable:
    """Decorates an `__init__` so that its arguments are checked, before its body runs, by the
    rules of their config keys (`check_fields`): the Python API refuses what the config does,
    with the same words, from the same rules."""

    def decorate(init: Callable) -> Callable:
        signature = inspect.signature(init)

        @functools.wraps(init)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            check_fields(bound.arguments, *prefixes, command=command)
            return init(*args, **kwargs)

        return wrapper

    return decorate
