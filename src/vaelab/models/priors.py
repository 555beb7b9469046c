"""Priors p(z): each `distribution(encode)` returns a Distribution with event shape (D,).

`encode` maps images (K, C, H, W) to q(z|u), batch shape (K,), event shape (D,); only the
VampPrior uses it. Call `distribution` once per training step and reuse the result for
every image of the batch: the VampPrior encodes all its pseudo-inputs in that one call.
"""

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from vaelab.models.capabilities import EncodingPrior, PriorCapabilities, StandardNormalPrior

Encode = Callable[[Tensor], Distribution]

# Pseudo-input initialisation of Tomczak & Welling (2018), from the defaults of their code
# (jmtomczak/vae_vampprior, experiment.py: pseudoinputs_mean, pseudoinputs_std): the
# pre-activations of the pseudo-inputs are drawn from N(-0.05, 0.01²).
PSEUDO_INPUTS_MEAN = -0.05
PSEUDO_INPUTS_STD = 0.01


class Prior(nn.Module, PriorCapabilities):
    """p(z) over D latent dimensions; what it can do: `PriorCapabilities`."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def distribution(self, encode: Encode | None = None) -> Distribution:
        """p(z): batch shape (), event shape (D,); `log_prob` of z (..., D) gives (...) nats."""
        raise NotImplementedError


class StandardPrior(Prior, StandardNormalPrior):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        # Buffers so that the prior follows the module across devices; not persistent, so
        # checkpoints hold no constants.
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def distribution(self, encode: Encode | None = None) -> Distribution:
        return _diagonal_normal(self.loc, self.scale)


class MixturePrior(Prior):
    """p(z) = 1/K Σ_k N(μ_k, diag σ_k²) with learnable means and scales.

    The weights are uniform, not learned: with learnable weights the ELBO's gradient moves
    weight onto the components that posteriors already use, which starves the others (a
    rich-get-richer collapse onto few components), and uniform weights make this prior
    differ from the VampPrior (also uniform) only in how its components are parameterised.

    Args:
        latent_dim: D.
        components: K.
    """

    def __init__(self, latent_dim: int, components: int):
        super().__init__(latent_dim)
        # Means spread like draws of N(0, I) so that components start apart; unit scales.
        self.loc = nn.Parameter(torch.randn(components, latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(components, latent_dim))
        self.register_buffer("logits", torch.zeros(components), persistent=False)

    def distribution(self, encode: Encode | None = None) -> Distribution:
        components = _diagonal_normal(self.loc, self.log_scale.exp())
        return _uniform_mixture(self.logits, components)


class VampPrior(Prior, EncodingPrior):
    """p(z) = 1/K Σ_k q(z|u_k) over K learnable pseudo-inputs u_k (Tomczak & Welling 2018).

    The pseudo-inputs are sigmoid(a_k), kept in [0, 1] like the images. Their code clips
    a_k with hardtanh(0, 1) instead, but with its initialisation N(-0.05, 0.01²) every a_k
    lies below 0, where hardtanh is flat: each pseudo-input would start as the black image
    and receive no gradient. The sigmoid passes gradient everywhere; with the same a_k the
    pseudo-inputs start as near-identical mid-grey images (sigmoid(-0.05) ≈ 0.49) whose
    small spread breaks the symmetry between components.

    Args:
        latent_dim: D.
        components: K, the number of pseudo-inputs.
        image_shape: (C, H, W) of one image.
    """

    def __init__(self, latent_dim: int, components: int, image_shape: Sequence[int]):
        super().__init__(latent_dim)
        self.image_shape = tuple(image_shape)
        self.pseudo_logits = nn.Parameter(
            PSEUDO_INPUTS_MEAN + PSEUDO_INPUTS_STD * torch.randn(components, *self.image_shape)
        )
        self.register_buffer("logits", torch.zeros(components), persistent=False)

    def pseudo_inputs(self) -> Tensor:
        """The pseudo-inputs u_k: (K, C, H, W) in [0, 1]."""
        return torch.sigmoid(self.pseudo_logits)

    def distribution(self, encode: Encode | None = None) -> Distribution:
        if encode is None:
            raise TypeError("VampPrior.distribution needs encode, the map from images to q(z|x)")
        components = encode(self.pseudo_inputs())
        expected = (torch.Size([len(self.logits)]), torch.Size([self.latent_dim]))
        if (components.batch_shape, components.event_shape) != expected:
            raise ValueError(
                f"encode gave batch shape {tuple(components.batch_shape)} and event shape "
                f"{tuple(components.event_shape)} for {len(self.logits)} pseudo-inputs; "
                f"expected ({len(self.logits)},) and ({self.latent_dim},)"
            )
        return _uniform_mixture(self.logits, components)


class DiagonalNormalMixture(MixtureSameFamily):
    """A mixture of K diagonal Gaussians whose `log_prob` never forms the (..., K, D) tensor.

    `MixtureSameFamily.log_prob` broadcasts every z against every component: for the
    VampPrior's 500 components in a K = 1,000 importance-sampled test batch that is 5·10⁹
    numbers per step. Expanding the square instead,

        Σ_d (z_d − μ_kd)² / σ_kd² = z² · (1/σ_k²) − 2 z · (μ_k/σ_k²) + Σ_d μ_kd²/σ_kd²,

    gives every component's log-density from two matrix products of (..., D) by (D, K).
    The expansion subtracts large numbers when σ is small, so it is computed in float64
    (and outside autocast): it agrees with the broadcast form to float32's rounding.
    Sampling, the mean and the rest are `MixtureSameFamily`'s own.
    """

    def __init__(self, logits: Tensor, loc: Tensor, scale: Tensor):
        if loc.dim() != 2 or loc.shape != scale.shape or logits.shape != loc.shape[:1]:
            raise ValueError(
                f"expected logits (K,), loc and scale (K, D); got {tuple(logits.shape)}, "
                f"{tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        # Not validated, like every density here: validation costs host syncs in each step.
        super().__init__(
            Categorical(logits=logits, validate_args=False),
            _diagonal_normal(loc, scale),
            validate_args=False,
        )

    def log_prob(self, value: Tensor) -> Tensor:
        normal = self.component_distribution.base_dist
        with torch.autocast(value.device.type, enabled=False):
            loc, scale, z = normal.loc.double(), normal.scale.double(), value.double()
            precision = scale.pow(-2)
            squares = (
                z.pow(2) @ precision.T
                - 2 * (z @ (loc * precision).T)
                + (loc.pow(2) * precision).sum(-1)
            )
            log_norm = scale.log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)
            log_weights = self.mixture_distribution.logits.double()  # normalised
            log_p = torch.logsumexp(log_weights - log_norm - 0.5 * squares.clamp(min=0), -1)
        return log_p.to(value.dtype)


def _uniform_mixture(logits: Tensor, components: Distribution) -> Distribution:
    """Mixture of the K components (batch shape (K,), event shape (D,)) with weights
    softmax(logits): a `DiagonalNormalMixture` where they are diagonal Gaussians."""
    if isinstance(components, Independent) and type(components.base_dist) is Normal:
        normal = components.base_dist
        return DiagonalNormalMixture(logits, normal.loc, normal.scale)
    weights = Categorical(logits=logits, validate_args=False)
    return MixtureSameFamily(weights, components, validate_args=False)


def _diagonal_normal(loc: Tensor, scale: Tensor) -> Distribution:
    """N(loc, diag scale²), event shape (D,)."""
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
