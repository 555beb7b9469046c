"""The builders of a model's parts from their config nodes: each part is named by a
`_target_` in its config group (conf/likelihood, conf/prior, conf/posterior, ...), checked
to be a subclass of its group's base (`vaelab.targets.named_class`) and built from its
typed arguments. The model classes build their prior and posterior with them; the model
itself is built by `vaelab.models.build`, above them."""

import inspect
from collections.abc import Mapping
from typing import Any

from vaelab.errors import ConfigError
from vaelab.likelihoods import BernoulliLikelihood, Likelihood
from vaelab.models.capabilities import likelihood_node
from vaelab.models.posteriors import GaussianPosterior, Posterior
from vaelab.models.priors import Prior, StandardPrior
from vaelab.targets import named_class


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
