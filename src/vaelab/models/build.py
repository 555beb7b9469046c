"""The builders of a VAE and its objective: `build_vae` builds the model option's class
(conf/model's `_target_`) with its likelihood, and the model builds its prior and
posterior (`vaelab.models.parts`, the builders of the parts, below the models);
`build_objective` the objective. The part builders are re-exported from here."""

from collections.abc import Mapping
from typing import Any

from vaelab.likelihoods import Likelihood
from vaelab.models.capabilities import model_node
from vaelab.models.encoders import ACTIVATIONS  # noqa: F401  (vaelab.models.ACTIVATIONS)
from vaelab.models.objectives import ElboObjective, Objective
from vaelab.models.parts import (  # noqa: F401  (vaelab.models.*)
    build_likelihood,
    build_part,
    build_part_class,
    build_posterior,
    build_prior,
)
from vaelab.models.vae import VAE, as_likelihood


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
