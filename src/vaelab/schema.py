"""The config schema: the type of every knob, and the values each one allows.

Types are Hydra structured configs, so OmegaConf refuses `latent_dim=abc` (or a
misspelt key) while Hydra composes. A value's rule is in its field (`knob`): `validate`
checks a composed config with the rules (`RULES`, read from the fields) right after
composition, before torch is imported, and the classes built from Python (LitVAE, the
data module, the callbacks, the model parts) check their arguments with the same rules
(`@checked`). The lists of choices (ARCHS, LIKELIHOODS, ...) are here, once; the data
sources are the options of conf/data/ themselves (`data.source_class`).

conf/train.yaml, eval.yaml and sample.yaml start their defaults list with their schema
(`schema/train@_here_`, ...), conf/callbacks/default.yaml with `/schema/pictures@pictures`;
a new knob is added to its YAML file and to its dataclass here, with its rule (the
`trainer` node's knobs are Lightning's Trainer arguments, with Lightning's defaults).
This module imports neither torch nor Lightning nor W&B: a bad value is reported in about
a second.
"""

import dataclasses
import difflib
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vaelab.errors import ConfigError

# The names of every choice: the one list of each, which the builders import. Where a
# builder maps names to code (ACTIVATIONS to nn.Module classes), tests/test_schema.py
# checks that the map has exactly these names.
ARCHS = ("mlp", "conv", "hvae")
ACTIVATIONS = ("relu", "tanh", "gated")  # gated: each dense layer a GatedDense
LIKELIHOODS = (
    "bernoulli",
    "continuous_bernoulli",
    "gaussian",
    "gaussian_learned",
    "discretized_logistic",
)
BINARY_LIKELIHOODS = ("bernoulli",)
# Whose log_prob is a density of x in [0, 1] (or R), not the mass of a discrete value: the
# probability of an 8-bit level is the density times a bin's width (`vaelab.estimators`).
DENSITY_LIKELIHOODS = ("continuous_bernoulli", "gaussian", "gaussian_learned")
# A scale per sub-pixel learned with the networks, starting at obs_scale.
LEARNED_SCALE_LIKELIHOODS = ("gaussian_learned", "discretized_logistic")
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

# --- rules: what a value may be -------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A check of one value, and what it allows in words (for the error message)."""

    allowed: str
    ok: Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def integer(minimum: int, maximum: int | None = None) -> Rule:
    allowed = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if maximum is not None:
        allowed = f"an integer in [{minimum}, {maximum}]"
    return Rule(
        allowed,
        lambda v: _is_int(v) and v >= minimum and (maximum is None or v <= maximum),
    )


def number(minimum: float, above: bool = False, below: float | None = None) -> Rule:
    """A finite number >= minimum (> minimum if `above`), and < below if given."""
    low = (lambda v: v > minimum) if above else (lambda v: v >= minimum)
    if below is not None:
        return Rule(
            f"a number in {'(' if above else '['}{minimum}, {below})",
            lambda v: _is_number(v) and low(v) and v < below,
        )
    return Rule(f"a number {'>' if above else '>='} {minimum}", lambda v: _is_number(v) and low(v))


BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))


def one_of(choices: tuple[str, ...]) -> Rule:
    return Rule(f"one of {', '.join(choices)}", lambda v: v in choices)


def noted(rule: Rule, note: str) -> Rule:
    return Rule(f"{rule.allowed} ({note})", rule.ok)


def or_null(rule: Rule) -> Rule:
    return Rule(f"{rule.allowed}, or null", lambda v: v is None or rule.ok(v))


SEED = integer(0, 2**32 - 1)  # what numpy, and so Lightning's seed_everything, accepts
# The top-level num_samples, and objective=elbo's, which the YAML sets from it.
NUM_SAMPLES = noted(integer(1), "z samples per image in the ELBO")


def knob(rule: Rule | None = None, default: Any = MISSING, nodes: dict | None = None) -> Any:
    """A schema field whose value `rule` checks: its type is the field's annotation, its
    value (or the default) comes from the YAML files. `nodes`, for a `dict` field: name ->
    an untyped dataclass holding the rules of that sub-node's keys ("args": of the node's
    own keys), for the model parts' arguments and the callbacks', which differ by option."""
    metadata = {"rule": rule} if rule else {}
    return dataclasses.field(default=default, metadata={**metadata, "nodes": nodes or {}})


# --- types and rules: the schemas of the YAML files, whose values come from the YAML files
# A field's rule (`knob`) is the one statement of what its value may be: `validate` checks
# composed configs with it, and `checked` the arguments of the classes built from Python.


@dataclass
class ModelConfig:
    arch: str = knob(one_of(ARCHS))
    hidden_dim: int = knob(integer(1))
    activation: str = knob(one_of(ACTIVATIONS))
    # model=hvae: the size of z₂, the top layer (z₁'s is latent_dim); null: latent_dim.
    top_dim: int | None = knob(or_null(integer(1)), default=None)


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
class BetaScheduleArgs:
    cycles: int = knob(integer(1))
    ratio: float = knob(
        Rule(
            "a number in (0, 1] (the fraction of each cycle during which beta rises)",
            lambda v: _is_number(v) and 0 < v <= 1,
        )
    )


@dataclass
class TrainerConfig:
    """The `trainer` node: every argument of Lightning's `Trainer` that a YAML file can give,
    with Lightning's own default (tests/test_schema.py compares both with the Trainer's
    signature), and vaelab's `compile`. conf/trainer/default.yaml sets vaelab's choices.

    Left out: logger, callbacks and plugins, which vaelab builds itself (conf/logger/,
    conf/callbacks/). Types are what OmegaConf can check; `Any` where Lightning also takes
    a list or a dict. Lightning checks the values.
    """

    _target_: str = "lightning.pytorch.Trainer"
    # torch.compile the encoder and decoder: vaelab's, not Lightning's
    compile: bool = knob(BOOLEAN, False)
    accelerator: str = "auto"
    strategy: str = "auto"
    devices: Any = "auto"  # int, list of ints, or str
    num_nodes: int = 1
    precision: int | str | None = None
    fast_dev_run: bool | int = False
    max_epochs: int | None = None
    min_epochs: int | None = None
    max_steps: int = -1
    min_steps: int | None = None
    max_time: Any = None  # "DD:HH:MM:SS", or a dict of timedelta's arguments
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    limit_predict_batches: int | float | None = None
    overfit_batches: int | float = 0.0
    val_check_interval: Any = None  # int, float, or a time as max_time
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int | None = None
    enable_checkpointing: bool | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: int | float | None = None
    gradient_clip_algorithm: str | None = None
    deterministic: bool | str | None = None  # true, false, or "warn"
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: str | None = None
    detect_anomaly: bool = False
    barebones: bool = False
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: str | None = None
    enable_autolog_hparams: bool = True
    model_registry: str | None = None


# The `trainer` node of `vaelab eval`: the arguments of a test (its batches, devices,
# precision, output), typed and defaulted as above.
EVAL_TRAINER_KEYS = (
    "_target_",
    "compile",
    "accelerator",
    "devices",
    "precision",
    "limit_test_batches",
    "enable_checkpointing",
    "enable_progress_bar",
    "enable_model_summary",
    "inference_mode",
    "deterministic",
    "benchmark",
    "profiler",
)
EvalTrainerConfig = dataclasses.make_dataclass(
    "EvalTrainerConfig",
    [
        (f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
        for f in dataclasses.fields(TrainerConfig)
        if f.name in EVAL_TRAINER_KEYS
    ],
)
EvalTrainerConfig.__module__ = __name__  # found by name when a pickled config is loaded (joblib)


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
    likelihood: str = knob(one_of(LIKELIHOODS))
    obs_scale: float = knob(number(0, above=True))
    num_samples: int = knob(NUM_SAMPLES)
    # a number of epochs, kept as typed
    kl_warmup_epochs: int | float = knob(noted(number(0), "0: no warm-up"))
    lr: float = knob(number(0, above=True))
    optimizer: str = knob(one_of(OPTIMIZERS))
    n_importance: int = knob(noted(integer(0), "0: no test log-likelihood"))
    # The test metrics of data with ground-truth factors (data=shapes): test/mig, ...
    disentanglement: DisentanglementConfig = MISSING
    batch_size: int = knob(integer(1))
    max_epochs: int = knob(
        Rule("a positive integer, or -1 (no limit)", lambda v: _is_int(v) and (v >= 1 or v == -1))
    )
    monitor: str = knob(one_of(MONITORS))
    project: str = MISSING
    group: str | None = MISSING
    tags: list[str] = MISSING
    run_name: str | None = MISSING
    resume: str | None = MISSING
    ckpt_path: str | None = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    paths: PathsConfig = MISSING
    # A default, not MISSING: OmegaConf 2.3 fails to fill a MISSING node holding Unions.
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    # The model parts (conf/prior, posterior, objective, beta_schedule): a `_target_` class
    # and its arguments, whose combinations `check_parts` checks.
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


_ABSENT = object()


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except OmegaConfBaseException as e:  # e.g. an interpolation that does not resolve
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from e


def _refuse_added_keys(node: DictConfig, path: str = "") -> None:
    """Keys added with `+key=value` to a typed node (its schema does not know them)."""
    keys = [str(k) for k in node if path or k != "hydra"]  # Hydra's own node is not ours
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = [f.name for f in dataclasses.fields(schema)]
        for key in set(keys) - set(known):
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {path}{near[0]}?" if near else f"its keys: {', '.join(known)}"
            raise ConfigError(f"{path}{key} is not a key of {path[:-1] or 'the config'}; {hint}")
    for key in keys:
        child = node._get_node(key)  # not node[key]: that would resolve interpolations
        if isinstance(child, DictConfig):
            _refuse_added_keys(child, f"{path}{key}.")


def validate(cfg: DictConfig, command: str = "train") -> None:
    """Check a composed config of `vaelab <command>` against `RULES` (absent keys are skipped).

    Raises:
        ConfigError: a key the schema does not know, or a value its rule refuses.
    """
    _refuse_added_keys(cfg)
    values = {key: _select(cfg, key) for key in RULES[command]}
    check({key: value for key, value in values.items() if value is not _ABSENT}, command=command)
    check_likelihood(values.get("likelihood"), values.get("data.binarize"))
    if command == "train":
        check_parts(cfg)


def _node(cfg: DictConfig, group: str) -> dict[str, Any] | None:
    node = OmegaConf.select(cfg, group)
    return OmegaConf.to_container(node) if isinstance(node, DictConfig) else None


def check_parts(cfg: DictConfig) -> None:
    """Refuse the combinations of model parts that are not defined, each with why. What a
    part can combine with is what its class declares (`factorised`, `diagonal_gaussian`,
    `needs_diagonal_gaussian`, `extras`: `vaelab.models.capabilities`), read without torch
    for vaelab's own parts.

    Raises:
        ConfigError: e.g. objective=betatc with a flow posterior.
    """
    arch, activation = (
        OmegaConf.select(cfg, "model.arch"),
        OmegaConf.select(cfg, "model.activation"),
    )
    if activation == "gated" and arch == "conv":
        raise ConfigError(
            "model.activation=gated makes each dense layer a gated one, and model=conv is "
            "convolutions: use model=mlp or model=hvae, or model.activation=relu"
        )
    from vaelab.models.capabilities import declared, kl_splits, named  # torch-free, imports us

    nodes = {group: _node(cfg, group) for group in ("prior", "posterior", "objective")}
    prior, posterior, objective = (declared(group, node) for group, node in nodes.items())
    # For the messages: the class names
    prior_name, posterior_name, objective_name = (named(g, node) for g, node in nodes.items())
    dreg = OmegaConf.select(cfg, "objective.gradient") == "dreg"
    free_bits = OmegaConf.select(cfg, "objective.free_bits", default=0) or 0
    if arch == "hvae" and not posterior.diagonal_gaussian:
        raise ConfigError(
            "model=hvae has its own posterior, q(z2|x) q(z1|x, z2) of diagonal Gaussians: "
            f"use posterior=gaussian (or the posterior {posterior_name} with model=mlp or conv)"
        )
    if arch == "hvae":
        refused = {
            f"the objective {objective_name}": objective.needs_diagonal_gaussian,
            "objective.gradient=dreg": dreg,
            "objective.free_bits": free_bits > 0,
        }
        for option, given in refused.items():
            if given:
                raise ConfigError(
                    f"{option} needs a diagonal Gaussian q(z|x), and model=hvae's is "
                    f"q(z2|x) q(z1|x, z2): use model=mlp or conv, or leave out {option}"
                )
    if objective.needs_diagonal_gaussian and not posterior.diagonal_gaussian:
        raise ConfigError(
            f"the objective {objective_name} needs the per-dimension densities of a diagonal "
            f"Gaussian q(z|x), which the posterior {posterior_name} does not have: use "
            "posterior=gaussian"
        )
    if dreg and not posterior.diagonal_gaussian:
        raise ConfigError(
            "objective.gradient=dreg evaluates q(z|x) with its parameters cut from the graph, "
            f"which the posterior {posterior_name} does not expose: use posterior=gaussian or "
            "objective.gradient=standard"
        )
    if free_bits > 0 and not kl_splits(posterior, prior):
        raise ConfigError(
            f"objective.free_bits={free_bits} needs the KL of each latent dimension, so a "
            f"factorised q(z|x) and p(z), which {posterior_name} with {prior_name} is "
            "not: use posterior=gaussian with prior=standard, or "
            "set objective.free_bits=0"
        )
    _check_condition(cfg, arch, prior, prior_name)
    monitor = OmegaConf.select(cfg, "monitor")
    if monitor in MONITORS[1:] and monitor.split("/", 1)[1] not in objective.extras:
        raise ConfigError(
            f"monitor={monitor} is logged by objective=iwae only, not by "
            f"the objective {objective_name}: use monitor=val/elbo"
        )
    warmup = OmegaConf.select(cfg, "kl_warmup_epochs", default=0) or 0
    if warmup > 0:
        from vaelab.models.schedules import schedule_class  # torch-free, and imports us

        node = OmegaConf.select(cfg, "beta_schedule")
        schedule = schedule_class(OmegaConf.to_container(node) if node is not None else None)
        if not schedule.uses_kl_warmup:
            raise ConfigError(
                f"kl_warmup_epochs={warmup} is the length of beta_schedule=linear's warm-up, "
                f"which {schedule.__name__} does not take: set kl_warmup_epochs=0"
            )


def _check_condition(cfg: DictConfig, arch: str, prior: type, prior_name: str) -> None:
    """Issue 24's conditional VAE: condition=labels with the parts it is defined for."""
    condition = _node(cfg, "condition")
    if not (condition and condition.get("_target_")):
        if prior.needs_condition:
            raise ConfigError(
                f"the prior {prior_name} is p(z|y), for a conditional model: add "
                "condition=labels, or use prior=standard"
            )
        return
    if arch not in ("mlp", "conv"):
        raise ConfigError(
            f"condition=labels is defined for model=mlp and conv, not model={arch}: use "
            "model=mlp or conv, or condition=none"
        )
    if prior.encodes:
        raise ConfigError(
            f"the prior {prior_name} runs the encoder on its pseudo-inputs, which a conditional "
            "encoder cannot without their labels: use prior=standard, mog or per_class"
        )


def check_likelihood(likelihood: str | None, binarize: str | None) -> None:
    """A likelihood of binary pixels needs binarized data."""
    if likelihood in BINARY_LIKELIHOODS and binarize == "none":
        raise ConfigError(
            f"likelihood={likelihood} needs binary pixels but data.binarize=none: use "
            "data.binarize=dynamic or static, or likelihood=continuous_bernoulli or gaussian"
        )


class ConfigRejected(BaseException):
    """A `ConfigError` carried out of a Hydra callback, for the `vaelab` command to print.

    A BaseException, because Hydra turns an Exception raised by a callback into a warning.
    """

    def __init__(self, error: ConfigError):
        super().__init__(str(error))
        self.error = error


class ValidateBeforeJobs(Callback):
    """Validates the config before Hydra starts anything: before a run makes its directory,
    before a multirun launches a job (with the overrides that are not swept; the jobs
    validate their own config too). Registered in `hydra.callbacks`."""

    def __init__(self, command: str):
        self.command = command

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._validate(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._validate(config)

    def _validate(self, config: DictConfig) -> None:
        try:
            validate(config, self.command)
        except ConfigError as e:
            raise ConfigRejected(e) from e
