"""The builders of a VAE and its parts: each is named by a `_target_` in its config group
(conf/model, conf/likelihood, conf/prior, conf/posterior, conf/objective) and built from
typed primitives. `build_vae` builds the model option's class with the likelihood, and the
model builds its prior and posterior."""

import inspect
from collections.abc import Mapping
from typing import Any

from vaelab.errors import ConfigError
from vaelab.likelihoods import BernoulliLikelihood, Likelihood
from vaelab.models.capabilities import likelihood_node, model_node
from vaelab.models.encoders import ACTIVATIONS  # noqa: F401  (vaelab.models.ACTIVATIONS)
from vaelab.models.objectives import ElboObjective, Objective
from vaelab.models.posteriors import GaussianPosterior, Posterior
from vaelab.models.priors import Prior, StandardPrior
from vaelab.models.vae import VAE, as_likelihood
from vaelab.targets import named_class


def build_vae(
    model: Mapping[str, Any] | None,
    image_shape: tuple[int, ...],
    latent_dim: int,
    likelihood: Likelihood | str,
    obs_scale: float | None = None,
    prior: Mapping[str, Any] | None = None,
    posterior: Mapping[str, Any] | None = None,
    condition: Mapping[str, Any] | None = None,
) -> VAE:
    """The VAE a `model` node names (`_target_`, a `VAE` subclass, and its arguments; an old
    run's `arch` translated; None: the default, conv), with its likelihood, whose parameters
    its decoder gives (`Likelihood.param_shape`; a likelihood given by an option's name takes
    `obs_scale`, `vaelab.models.vae.as_likelihood`), and the prior and posterior nodes, which
    it builds over its latent (a model with its own posterior takes none).
    With a resolved `condition` node (condition=labels), the conditional VAE of that model
    class (`vaelab.models.conditional.build_conditional_vae`)."""
    if condition:  # issue 24: the conditional VAE
        from vaelab.models.conditional import build_conditional_vae

        return build_conditional_vae(
            condition, model_node(dict(model or {})), tuple(image_shape), latent_dim,
            as_likelihood(likelihood, obs_scale), None, prior, posterior,
        )  # fmt: skip
    return build_part(
        model_node(dict(model or {})), VAE, VAE, "model", image_shape=tuple(image_shape),
        latent_dim=latent_dim, likelihood=as_likelihood(likelihood, obs_scale), obs_scale=None,
        prior=prior, posterior=posterior,
    )  # fmt: skip


def build_part(
    cfg: Mapping[str, Any] | None, default: type, base: type, where: str, **context: Any
) -> Any:
    """The part a config node names (`_target_`, a subclass of `base`, and its arguments),
    or `default` without one; `context` (latent_dim, image_shape, ...) fills the arguments
    the class takes."""
    cls = build_part_class(cfg, default, base, where)
    cfg = {k: v for k, v in (cfg or {}).items() if k != "_target_"}
    accepted = inspect.signature(cls).parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    unknown = [k for k in cfg if k in context or not (k in accepted or open_ended)]
    if unknown:  # a key added to the node (+model.depth=3), which no class of it takes
        own = [name for name in accepted if name not in context]
        raise ConfigError(
            f"{where}.{unknown[0]} is not an argument of {cls.__name__}; its arguments: "
            f"{', '.join(own)}"
        )
    return cls(**cfg, **{k: v for k, v in context.items() if k in accepted})


def build_likelihood(cfg: Any = None, obs_scale: float | None = None) -> Likelihood:
    """The likelihood of a `likelihood` node (an old run's option name and `obs_scale`
    translated, `likelihood_node`), Bernoulli without one."""
    node = likelihood_node(cfg, obs_scale)
    return build_part(node, BernoulliLikelihood, Likelihood, "likelihood")


def build_part_class(cfg: Mapping[str, Any] | None, default: type, base: type, where: str) -> type:
    """The class a config node (`where`: prior, posterior, objective, likelihood) names, `default`
    without a `_target_`; a checkpoint's hyperparameters are such nodes, so anything but a
    subclass of the part's `base` is refused without being called (`named_class`)."""
    return named_class(cfg["_target_"], base, where) if cfg and "_target_" in cfg else default


def part_classes(
    prior: Mapping[str, Any] | None = None,
    posterior: Mapping[str, Any] | None = None,
    objective: Mapping[str, Any] | None = None,
) -> tuple[type[Prior], type[Posterior], type[Objective]]:
    """The classes of a config's prior, posterior and objective nodes (each checked, its
    default without one): what they declare they can do decides how they combine."""
    return (
        build_part_class(prior, StandardPrior, Prior, "prior"),
        build_part_class(posterior, GaussianPosterior, Posterior, "posterior"),
        build_part_class(objective, ElboObjective, Objective, "objective"),
    )


def build_prior(
    cfg: Mapping[str, Any] | None, latent_dim: int, image_shape: tuple, **context: Any
) -> Prior:
    """The prior of `cfg`; `context` (a conditional model's `code_dim`) fills the
    arguments its class takes."""
    if build_part_class(cfg, StandardPrior, Prior, "prior").needs_condition and not context:
        raise ConfigError(
            "this prior is p(z|y), for a conditional model: add condition=labels, or use "
            "prior=standard"
        )
    return build_part(
        cfg, StandardPrior, Prior, "prior", latent_dim=latent_dim, image_shape=image_shape,
        **context,
    )  # fmt: skip


def build_posterior(cfg: Mapping[str, Any] | None, latent_dim: int, context_dim: int) -> Posterior:
    return build_part(
        cfg, GaussianPosterior, Posterior, "posterior", latent_dim=latent_dim,
        context_dim=context_dim,
    )  # fmt: skip


def build_objective(
    cfg: Mapping[str, Any] | None, num_samples: int, dataset_size: int | None
) -> Objective:
    """The objective of `cfg`, the beta-ELBO with `num_samples` draws without one;
    `dataset_size` is given to the objectives that `needs_dataset_size` (beta-TCVAE)."""
    if not cfg:
        return ElboObjective(num_samples=num_samples)
    cls = build_part_class(cfg, ElboObjective, Objective, "objective")
    context = {"dataset_size": dataset_size} if cls.needs_dataset_size else {}
    return build_part(cfg, ElboObjective, Objective, "objective", **context)
