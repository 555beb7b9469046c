"""What each kind of model part can do, declared by its class: the composition check
(`vaelab.config.checks.check_parts`, `check_likelihood`), the model (`VAE.kl_splits`, read
by the diagnostics, the pictures and the objectives; `VAE.density`, read by the estimators)
and the objectives' builder read these attributes, never a class name.

Torch-free, so that a bad combination of vaelab's own parts is reported before torch is
imported (0.4 s, where importing the part modules costs 1.2 s more): the part classes
inherit their declarations from here, and `DECLARED` finds vaelab's own classes' by their
`_target_` without importing them (tests/test_schema.py checks that each named class
inherits its entry). Any other part (a user's) is imported and read from its class.
"""

from collections.abc import Mapping
from typing import Any

from vaelab.config.schemas import ACTIVATIONS
from vaelab.errors import ConfigError
from vaelab.targets import named_class


class ModelCapabilities:
    """What a model (`conf/model`, a `VAE` subclass: its networks and how its latent is laid
    out) can combine with.
    `own_posterior`: q(z|x) is the model's own (e.g. over several stochastic layers), not
    the posterior group's: only a `diagonal_gaussian` posterior option (its top layer's),
    and q(z|x) itself is no diagonal Gaussian, so no objective that needs one, no DReG and no
    free bits.
    `activations`: the `model.activation` values its networks take.
    `label_input`: how a conditional model's labels y (their one-hot code) enter its
    encoder network (condition=labels, `vaelab.models.conditional`): "features", joined to
    the flattened x; "channels", as constant channels of x; None: the model cannot be
    conditioned. Its decoder then takes [z, y]."""

    own_posterior: bool = False
    activations: tuple[str, ...] = ACTIVATIONS  # every one (`vaelab.config.schemas`)
    label_input: str | None = None


class DenseNetworks(ModelCapabilities):
    label_input = "features"


class ConvNetworks(ModelCapabilities):
    activations = ("relu", "tanh")  # convolutions: no gated dense layers
    label_input = "channels"


class OwnPosterior(ModelCapabilities):
    own_posterior = True


class OwnPosteriorConvNetworks(OwnPosterior, ConvNetworks):
    """A hierarchy of convolutional networks (model=topdown_conv)."""


class PriorCapabilities:
    """`factorised`: p(z) is an Independent over the latent dimensions (with a closed-form
    KL per dimension against a factorised posterior).
    `standard_normal`: p(z) is N(0, I) over its dimensions (drawn with torch.randn).
    `needs_condition`: it is p(z|y), for a conditional model only (condition=labels).
    `encodes`: its density runs the encoder (the VampPrior's q(z|u_k)), which a conditional
    model's encoder cannot without labels."""

    factorised: bool = False
    standard_normal: bool = False
    needs_condition: bool = False
    encodes: bool = False


class PosteriorCapabilities:
    """`factorised`: q(z|x) is an Independent over the latent dimensions.
    `diagonal_gaussian`: q(z|x) is Independent(Normal(loc, scale), 1), whose per-dimension
    densities beta-TC reads and whose parameters DReG detaches."""

    factorised: bool = False
    diagonal_gaussian: bool = False


class ObjectiveCapabilities:
    """`needs_diagonal_gaussian`: only defined for a `diagonal_gaussian` posterior.
    `needs_dataset_size`: takes the training set's size (`dataset_size`).
    `extras`: the values it returns (and so logs) besides loss, elbo, rec and kl.
    `own_beta`: holds its own beta, so a call's `beta` is the schedule's fraction in [0, 1]."""

    needs_diagonal_gaussian: bool = False
    needs_dataset_size: bool = False
    extras: tuple[str, ...] = ()
    own_beta: bool = False


class LikelihoodCapabilities:
    """What p(x|z) (`vaelab.likelihoods.Likelihood`) is.

    `binary`: its support is {0, 1}, so it needs binarized data.
    `density`: its log_prob is a density of x, not the mass of a discrete value; the
    probability of an 8-bit level is then the mass of the level's bin (`log_mass`).
    `eight_bit`: it gives the probability of 8-bit levels k/255 (`log_mass`), so bits per
    sub-pixel of 8-bit data.
    `learned_scale`: a scale per sub-pixel learned with the networks (the VAE's
    `log_obs_scale`), starting at the likelihood's `obs_scale`.
    """

    binary: bool = False
    density: bool = False
    eight_bit: bool = False
    learned_scale: bool = False

    def param_channels(self, channels: int) -> int:
        """The decoder's output channels for data of `channels` channels: one parameter per
        sub-pixel, unless the likelihood says otherwise (a mixture's several)."""
        return channels


class BinaryLikelihood(LikelihoodCapabilities):
    binary = True


class EightBitDensity(LikelihoodCapabilities):
    density = True
    eight_bit = True


class LearnedScaleDensity(EightBitDensity):
    learned_scale = True


class EightBitMass(LikelihoodCapabilities):
    eight_bit = True


class LearnedScaleMass(EightBitMass):
    learned_scale = True


class FactorisedPrior(PriorCapabilities):
    factorised = True


class StandardNormalPrior(FactorisedPrior):
    standard_normal = True


class ConditionalPrior(FactorisedPrior):
    needs_condition = True


class EncodingPrior(PriorCapabilities):
    encodes = True


class DiagonalGaussianPosterior(PosteriorCapabilities):
    factorised = True
    diagonal_gaussian = True


class ImportanceWeighted(ObjectiveCapabilities):
    extras = ("iwae",)


class TotalCorrelation(ObjectiveCapabilities):
    extras = ("mi", "tc", "dwkl")
    own_beta = True
    needs_diagonal_gaussian = True
    needs_dataset_size = True


# vaelab's own parts, by `_target_`: the declaration each class inherits.
_MODELS = "vaelab.models."
_LIKELIHOODS = "vaelab.likelihoods."
DECLARED: dict[str, type] = {
    _MODELS + "architectures.MLPVAE": DenseNetworks,
    _MODELS + "architectures.ConvVAE": ConvNetworks,
    _MODELS + "hvae.HierarchicalVAE": OwnPosterior,
    _MODELS + "topdown.TopDownVAE": OwnPosterior,
    _MODELS + "topdown.TopDownConvVAE": OwnPosteriorConvNetworks,
    _MODELS + "priors.StandardPrior": StandardNormalPrior,
    _MODELS + "priors.MixturePrior": PriorCapabilities,
    _MODELS + "priors.VampPrior": EncodingPrior,
    _MODELS + "conditional.ClassPrior": ConditionalPrior,
    _MODELS + "posteriors.GaussianPosterior": DiagonalGaussianPosterior,
    _MODELS + "posteriors.IAFPosterior": PosteriorCapabilities,
    _MODELS + "objectives.ElboObjective": ObjectiveCapabilities,
    _MODELS + "objectives.IwaeObjective": ImportanceWeighted,
    _MODELS + "objectives.BetaTCObjective": TotalCorrelation,
    _LIKELIHOODS + "BernoulliLikelihood": BinaryLikelihood,
    _LIKELIHOODS + "ContinuousBernoulliLikelihood": EightBitDensity,
    _LIKELIHOODS + "GaussianLikelihood": EightBitDensity,
    _LIKELIHOODS + "LearnedGaussianLikelihood": LearnedScaleDensity,
    _LIKELIHOODS + "DiscretizedLogisticLikelihood": LearnedScaleMass,
    _LIKELIHOODS + "LogisticMixtureLikelihood": EightBitMass,
}
# Without a node: what `vaelab.models.build` builds.
DEFAULTS = {
    "model": _MODELS + "architectures.ConvVAE",
    "prior": _MODELS + "priors.StandardPrior",
    "posterior": _MODELS + "posteriors.GaussianPosterior",
    "objective": _MODELS + "objectives.ElboObjective",
    "likelihood": _LIKELIHOODS + "BernoulliLikelihood",
}
# What a part of each group declares: a part (`Prior`, ...) inherits its group's.
BASES = {
    "model": ModelCapabilities,
    "prior": PriorCapabilities,
    "posterior": PosteriorCapabilities,
    "objective": ObjectiveCapabilities,
    "likelihood": LikelihoodCapabilities,
}


# Runs made before the model options named their class wrote `arch: <option>` instead of a
# `_target_` (in config.yaml and, with the other model keys at its top level, the
# checkpoint's hyperparameters); read only here.
_OLD_ARCHS = {
    "mlp": _MODELS + "architectures.MLPVAE",
    "conv": _MODELS + "architectures.ConvVAE",
    "hvae": _MODELS + "hvae.HierarchicalVAE",
}


def model_node(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """A `model` node with its `_target_`: an old node's `arch` translated (and its
    `top_dim`, which every old node had, kept only for hvae, the one that took it); no node:
    the default model, conv."""
    node = dict(cfg or {})
    if "_target_" in node:
        return node
    arch = node.pop("arch", "conv")  # the default model then, as now (DEFAULTS)
    if arch not in _OLD_ARCHS:
        raise ConfigError(
            f"model.arch={arch} is not a model: give model._target_, e.g. "
            f"{DEFAULTS['model']}, or model=<option> (conf/model)"
        )
    if arch != "hvae":  # it had no effect there
        node.pop("top_dim", None)
    return {"_target_": _OLD_ARCHS[arch], **node}


def named(group: str, node: dict[str, Any] | None) -> str:
    """The class name of the part a node names (its default without one)."""
    if group == "model":
        node = model_node(node)
    return ((node or {}).get("_target_") or DEFAULTS[group]).rsplit(".", 1)[-1]


def declared(group: str, node: dict[str, Any] | None) -> type:
    """What the part of a config node (`group`: model, likelihood, prior, posterior or
    objective) declares it can do: vaelab's own from `DECLARED`, torch-free; any other
    class, imported and checked (`vaelab.targets.named_class`)."""
    if group == "model":
        node = model_node(node)
    target = (node or {}).get("_target_") or DEFAULTS[group]
    if target in DECLARED:
        return DECLARED[target]
    # A user's part: its module (and torch) imported, the class read if it declares what a
    # part of the group can do; building it checks it against the part's own base class.
    return named_class(target, BASES[group], group)


# Runs made before conf/likelihood/ wrote `likelihood: <option>` and a top-level `obs_scale`
# (in config.yaml and the checkpoint's hyperparameters); translated only by `likelihood_node`.
_OLD_LIKELIHOODS = {
    "bernoulli": "BernoulliLikelihood",
    "continuous_bernoulli": "ContinuousBernoulliLikelihood",
    "gaussian": "GaussianLikelihood",
    "gaussian_learned": "LearnedGaussianLikelihood",
    "discretized_logistic": "DiscretizedLogisticLikelihood",
}
_OLD_SCALED = ("gaussian", "gaussian_learned", "discretized_logistic")
OLD_OBS_SCALE = 0.1  # the top-level default those runs had


def likelihood_node(likelihood: Any, obs_scale: float | None = None) -> dict[str, Any]:
    """A `likelihood` node with its `_target_`: a node as it is; an old run's option name
    (and its top-level `obs_scale`) as the node its option file gives today.

    Raises:
        ConfigError: a name that was never an option.
    """
    if isinstance(likelihood, Mapping):
        return dict(likelihood)
    name = likelihood or "bernoulli"  # the default before the node
    if name not in _OLD_LIKELIHOODS:
        raise ConfigError(
            f"likelihood={name} is not a likelihood: give a likelihood node with its "
            f"_target_, e.g. {_LIKELIHOODS}GaussianLikelihood (the options: conf/likelihood/)"
        )
    node = {"_target_": _LIKELIHOODS + _OLD_LIKELIHOODS[name], "name": name}
    if name in _OLD_SCALED:
        node["obs_scale"] = OLD_OBS_SCALE if obs_scale is None else obs_scale
    return node


def translate_old_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config with an old `likelihood: <option>` and top-level `obs_scale` in the
    form of today (`likelihood_node`); a config of today as it is."""
    if "likelihood" not in config and "obs_scale" not in config:
        return config
    config = dict(config)
    obs_scale = config.pop("obs_scale", None)
    if "likelihood" in config or obs_scale is not None:
        config["likelihood"] = likelihood_node(config.get("likelihood"), obs_scale)
    return config


def kl_splits(posterior: PosteriorCapabilities, prior: PriorCapabilities) -> bool:
    """The KL of q(z|x) from p(z) is a sum over latent dimensions (free bits, the KL per
    dimension of the diagnostics): both factorised. Of classes or of built parts alike."""
    return posterior.factorised and prior.factorised
