"""What each kind of model part can do, declared by its class: the composition check
(`vaelab.schema.check_parts`), the model (`VAE.kl_splits`, read by the diagnostics and the
pictures) and the objectives' builder read these attributes, never a class name.

Torch-free, so that a bad combination of vaelab's own parts is reported before torch is
imported (0.4 s, where importing the part modules costs 1.2 s more): the part classes
inherit their declarations from here, and `DECLARED` finds vaelab's own classes' by their
`_target_` without importing them (tests/test_schema.py checks that each named class
inherits its entry). Any other part (a user's) is imported and read from its class.
"""

from typing import Any

from vaelab.targets import named_class


class PriorCapabilities:
    """`factorised`: p(z) is an Independent over the latent dimensions (with a closed-form
    KL per dimension against a factorised posterior). `needs_condition`: it is p(z|y), for
    a conditional model only (condition=labels). `encodes`: its density runs the encoder
    (the VampPrior's q(z|u_k)), which a conditional model's encoder cannot without labels."""

    factorised: bool = False
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


class FactorisedPrior(PriorCapabilities):
    factorised = True


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
DECLARED: dict[str, type] = {
    _MODELS + "priors.StandardPrior": FactorisedPrior,
    _MODELS + "priors.MixturePrior": PriorCapabilities,
    _MODELS + "priors.VampPrior": EncodingPrior,
    _MODELS + "conditional.ClassPrior": ConditionalPrior,
    _MODELS + "posteriors.GaussianPosterior": DiagonalGaussianPosterior,
    _MODELS + "posteriors.IAFPosterior": PosteriorCapabilities,
    _MODELS + "objectives.ElboObjective": ObjectiveCapabilities,
    _MODELS + "objectives.IwaeObjective": ImportanceWeighted,
    _MODELS + "objectives.BetaTCObjective": TotalCorrelation,
}
# Without a node: what `vaelab.models.build` builds.
DEFAULTS = {
    "prior": _MODELS + "priors.StandardPrior",
    "posterior": _MODELS + "posteriors.GaussianPosterior",
    "objective": _MODELS + "objectives.ElboObjective",
}
# What a part of each group declares: a part (`Prior`, ...) inherits its group's.
BASES = {
    "prior": PriorCapabilities,
    "posterior": PosteriorCapabilities,
    "objective": ObjectiveCapabilities,
}


def named(group: str, node: dict[str, Any] | None) -> str:
    """The class name of the part a node names (its default without one)."""
    return ((node or {}).get("_target_") or DEFAULTS[group]).rsplit(".", 1)[-1]


def declared(group: str, node: dict[str, Any] | None) -> type:
    """What the part of a config node (`group`: prior, posterior or objective) declares it
    can do: vaelab's own from `DECLARED`, torch-free; any other class, imported and checked
    (`vaelab.targets.named_class`)."""
    target = (node or {}).get("_target_") or DEFAULTS[group]
    if target in DECLARED:
        return DECLARED[target]
    # A user's part: its module (and torch) imported, the class read if it declares what a
    # part of the group can do; building it checks it against the part's own base class.
    return named_class(target, BASES[group], group)


def kl_splits(posterior: PosteriorCapabilities, prior: PriorCapabilities) -> bool:
    """The KL of q(z|x) from p(z) is a sum over latent dimensions (free bits, the KL per
    dimension of the diagnostics): both factorised. Of classes or of built parts alike."""
    return posterior.factorised and prior.factorised
