"""The checks of a composed config before anything runs: its values against their rules
(`validate`), the combinations of model parts (`check_parts`), the likelihood against the
data's binarization, and the Hydra callback that runs them before a job starts. Torch-free."""

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vaelab.config.schemas import MONITORS, RULES, check
from vaelab.errors import ConfigError
from vaelab.models.capabilities import declared, kl_splits, likelihood_node, named  # torch-free
from vaelab.models.schedules import schedule_class  # torch-free

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
    if command == "train":
        if OmegaConf.select(cfg, "obs_scale") is not None:
            raise ConfigError(
                "obs_scale is now the likelihood's: use likelihood.obs_scale=... (with "
                "likelihood=gaussian, gaussian_learned or discretized_logistic)"
            )
        check_likelihood(_node(cfg, "likelihood"), values.get("data.binarize"))
        check_parts(cfg)


def _node(cfg: DictConfig, group: str) -> dict[str, Any] | None:
    node = OmegaConf.select(cfg, group)
    return OmegaConf.to_container(node) if isinstance(node, DictConfig) else None


def check_parts(cfg: DictConfig) -> None:
    """Refuse the combinations of model parts that are not defined, each with why. What a
    part can combine with is what its class declares (the model's `own_posterior`,
    `activations` and `label_input`, the prior's `needs_condition` and `encodes`,
    `factorised`, `diagonal_gaussian`, `needs_diagonal_gaussian`, `extras`:
    `vaelab.models.capabilities`), read without torch for vaelab's own parts.

    Raises:
        ConfigError: e.g. objective=betatc with a flow posterior.
    """
    nodes = {g: _node(cfg, g) for g in ("model", "prior", "posterior", "objective")}
    model, prior, posterior, objective = (declared(g, node) for g, node in nodes.items())
    # For the messages: the class names
    model_name, prior_name, posterior_name, objective_name = (
        named(g, node) for g, node in nodes.items()
    )
    activation = OmegaConf.select(cfg, "model.activation")
    if activation is not None and activation not in model.activations:
        raise ConfigError(
            f"model.activation={activation} is not one the networks of the model "
            f"{model_name} take ({', '.join(model.activations)}; gated makes each dense "
            f"layer a gated one): set model.activation={model.activations[0]}, or use a "
            "model that takes it (e.g. model=mlp)"
        )
    dreg = OmegaConf.select(cfg, "objective.gradient") == "dreg"
    free_bits = OmegaConf.select(cfg, "objective.free_bits", default=0) or 0
    if model.own_posterior and not posterior.diagonal_gaussian:
        raise ConfigError(
            f"the model {model_name} has its own posterior (over its stochastic layers, of "
            f"diagonal Gaussians): use posterior=gaussian (or the posterior {posterior_name} "
            "with model=mlp or conv)"
        )
    if model.own_posterior:
        refused = {
            f"the objective {objective_name}": objective.needs_diagonal_gaussian,
            "objective.gradient=dreg": dreg,
            "objective.free_bits": free_bits > 0,
        }
        for option, given in refused.items():
            if given:
                raise ConfigError(
                    f"{option} needs a diagonal Gaussian q(z|x), and the model {model_name}'s "
                    f"is its own (e.g. q(z2|x) q(z1|x, z2)): use model=mlp or conv, or leave "
                    f"out {option}"
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
    _check_condition(cfg, model, model_name, prior, prior_name)
    monitor = OmegaConf.select(cfg, "monitor")
    if monitor in MONITORS[1:] and monitor.split("/", 1)[1] not in objective.extras:
        raise ConfigError(
            f"monitor={monitor} is logged by objective=iwae only, not by "
            f"the objective {objective_name}: use monitor=val/elbo"
        )
    warmup = OmegaConf.select(cfg, "kl_warmup_epochs", default=0) or 0
    if warmup > 0:
        node = OmegaConf.select(cfg, "beta_schedule")
        schedule = schedule_class(OmegaConf.to_container(node) if node is not None else None)
        if not schedule.uses_kl_warmup:
            raise ConfigError(
                f"kl_warmup_epochs={warmup} is the length of beta_schedule=linear's warm-up, "
                f"which {schedule.__name__} does not take: set kl_warmup_epochs=0"
            )


def _check_condition(
    cfg: DictConfig, model: type, model_name: str, prior: type, prior_name: str
) -> None:
    """Issue 24's conditional VAE: condition=labels with the parts it is defined for, as
    they declare (the model's `label_input`, the prior's `needs_condition` and `encodes`)."""
    condition = _node(cfg, "condition")
    if not (condition and condition.get("_target_")):
        if prior.needs_condition:
            raise ConfigError(
                f"the prior {prior_name} is p(z|y), for a conditional model: add "
                "condition=labels, or use prior=standard"
            )
        return
    if not model.label_input:
        raise ConfigError(
            f"condition=labels needs a model whose networks take the labels (one that "
            f"declares label_input, e.g. model=mlp or conv), not the model {model_name}: use "
            "model=mlp or conv, or condition=none"
        )
    if prior.encodes:
        raise ConfigError(
            f"the prior {prior_name} runs the encoder on its pseudo-inputs, which a conditional "
            "encoder cannot without their labels: use prior=standard, mog or per_class"
        )


def check_likelihood(likelihood: Mapping[str, Any] | str | None, binarize: str | None) -> None:
    """A likelihood of binary pixels (one that declares `binary`) needs binarized data.
    `likelihood`: its node (or an old run's option name)."""
    node = likelihood_node(likelihood)
    if declared("likelihood", node).binary and binarize == "none":
        name = node.get("name") or node["_target_"]
        raise ConfigError(
            f"likelihood={name} needs binary pixels but data.binarize=none: use "
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
