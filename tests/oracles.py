"""A linear-Gaussian VAE whose log p(x), posterior and ELBO are known in closed form.

p(z) = N(0, I_d), p(x|z) = N(W z + b, σ² I_n), so p(x) = N(b, W Wᵀ + σ² I_n) exactly.
W = Q diag(s) has orthogonal columns, so the exact posterior
p(z|x) = N(Σ Wᵀ (x − b) / σ², Σ), Σ = (I + WᵀW / σ²)⁻¹ = diag(σ² / (σ² + s²)),
is diagonal: a diagonal-Gaussian encoder can be exact (ELBO = log p(x), all importance
weights equal) or deliberately perturbed.

The model is a real `VAE` in float32 (it casts densities to float32); the closed forms are
computed in float64, and tests compare with tolerances well above float32 rounding.
"""

import math

import torch
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from vaelab.models.vae import VAE


class LinearGaussianEncoder(nn.Module):
    """q(z|x) = N(A x + c, diag scale²), with a learnable scale that does not depend on x."""

    def __init__(self, weight: Tensor, bias: Tensor, scale: Tensor):
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        self.log_scale = nn.Parameter(scale.float().log())
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc = self.linear(x)
        return loc, self.log_scale.exp().expand_as(loc)


class LinearGaussian:
    """The generative model with exact answers; `vae(...)` builds a `VAE` for it.

    Args:
        latent_dim: d.
        data_dim: n >= d.
        obs_scale: σ; small σ makes the posterior much narrower than the prior.
        seed: seeds W and b.
    """

    def __init__(
        self, latent_dim: int = 3, data_dim: int = 8, obs_scale: float = 0.05, seed: int = 0
    ):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64))
        s = 1 + torch.rand(latent_dim, generator=g, dtype=torch.float64)  # column norms in [1, 2)
        self.W = q * s  # (n, d)
        self.b = torch.randn(data_dim, generator=g, dtype=torch.float64)
        self.obs_scale = obs_scale
        self.latent_dim = latent_dim
        self.post_var = obs_scale**2 / (obs_scale**2 + s**2)  # diagonal of Σ, (d,)
        self.post_weight = self.post_var[:, None] * self.W.T / obs_scale**2  # Σ Wᵀ / σ², (d, n)

    def marginal(self) -> MultivariateNormal:
        """p(x) = N(b, W Wᵀ + σ² I), float64."""
        cov = self.W @ self.W.T + self.obs_scale**2 * torch.eye(len(self.b), dtype=torch.float64)
        return MultivariateNormal(self.b, cov)

    def log_px(self, x: Tensor) -> Tensor:
        """Exact log p(x): (B,) nats, float64."""
        return self.marginal().log_prob(x.double())

    def sample(self, num: int, seed: int = 0) -> Tensor:
        """num draws from p(x): (num, n) float32, from their own generator."""
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn(num, len(self.b), generator=g, dtype=torch.float64)
        return (self.b + eps @ self.marginal().scale_tril.T).float()

    def vae(self, loc_shift: float = 0.0, scale_factor: float = 1.0) -> VAE:
        """A VAE with this decoder and the exact encoder, or a perturbed one.

        Args:
            loc_shift: posterior means moved by this many posterior standard deviations.
            scale_factor: posterior standard deviations multiplied by this.
        """
        post_std = self.post_var.sqrt()
        bias = -self.post_weight @ self.b + loc_shift * post_std
        encoder = LinearGaussianEncoder(self.post_weight, bias, scale_factor * post_std)
        decoder = nn.Linear(self.latent_dim, len(self.b))
        with torch.no_grad():
            decoder.weight.copy_(self.W)
            decoder.bias.copy_(self.b)
        # value_range=None: x lives on the whole real line, not in [0, 1] like an image.
        return VAE(encoder, decoder, self.latent_dim, "gaussian", self.obs_scale, None)

    @torch.no_grad()
    def elbo(self, vae: VAE, x: Tensor) -> Tensor:
        """Closed-form ELBO of `vae`'s encoder: (B,) nats, float64.

        E_q log p(x|z) = −n/2 log(2πσ²) − (‖x − W m − b‖² + Σ_i ‖W_i‖² v_i) / (2σ²).
        """
        loc, scale = (t.double() for t in vae.encoder(x))
        sq_err = (x.double() - loc @ self.W.T - self.b).square().sum(-1)
        trace = scale.square() @ self.W.square().sum(0)
        var = self.obs_scale**2
        rec = -0.5 * len(self.b) * math.log(2 * math.pi * var) - (sq_err + trace) / (2 * var)
        qz_x = Independent(Normal(loc, scale), 1)
        pz = Independent(Normal(torch.zeros_like(loc), torch.ones_like(scale)), 1)
        return rec - kl_divergence(qz_x, pz)


class MixtureOfOnePriorVAE(VAE):
    """The same model with p(z) = N(0, I) written as a mixture of one component.

    The density is unchanged, so every closed form above still holds, but torch.distributions
    registers no KL for a MixtureSameFamily: objectives take their Monte Carlo KL branch.
    As a mixture prior does, it declares a KL that does not split into dimensions.
    """

    @property
    def kl_splits(self) -> bool:
        return False

    def prior(self) -> Distribution:
        loc, scale = self.prior_model.loc, self.prior_model.scale
        component = Independent(Normal(loc[None], scale[None]), 1)
        return MixtureSameFamily(Categorical(logits=loc.new_zeros(1)), component)


def with_monte_carlo_kl(vae: VAE) -> MixtureOfOnePriorVAE:
    """`vae`'s encoder and decoder (shared, not copied) under the mixture-of-one prior."""
    return MixtureOfOnePriorVAE(
        vae.encoder, vae.decoder, vae.latent_dim, vae.likelihood, vae.obs_scale
    )
