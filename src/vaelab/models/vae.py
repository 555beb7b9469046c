"""The one place latent distributions are built: posterior q(z|x), prior p(z), ELBO terms."""

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from vaelab.likelihoods import observation_dist


class VAE(nn.Module):
    """p(z) = N(0, I), q(z|x) = N(loc(x), diag scale(x)^2), p(x|z) from the decoder.

    Args:
        encoder: maps x (B, ...) to (loc, scale), each (B, D).
        decoder: maps z (B, D) to likelihood parameters shaped like one batch of x.
        latent_dim: D.
        likelihood: name of the observation model, see `vaelab.likelihoods`.
        obs_scale: standard deviation of the Gaussian likelihood.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        likelihood: str,
        obs_scale: float = 0.1,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.obs_scale = obs_scale
        # Buffers so that the prior follows the module across devices.
        self.register_buffer("prior_loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(latent_dim), persistent=False)

    def posterior(self, x: Tensor) -> Distribution:
        """q(z|x): batch shape (B,), event shape (D,)."""
        loc, scale = self.encoder(x)
        return _diagonal_normal(loc.float(), scale.float())

    def prior(self) -> Distribution:
        """p(z) = N(0, I): event shape (D,)."""
        return _diagonal_normal(self.prior_loc, self.prior_scale)

    def observation(self, z: Tensor) -> Distribution:
        """p(x|z) for z of shape (..., D): batch shape (...), event shape of one x."""
        params = self.decoder(z.reshape(-1, z.shape[-1]))
        params = params.reshape(*z.shape[:-1], *params.shape[1:])
        event_dims = params.dim() - (z.dim() - 1)
        return observation_dist(self.likelihood, params, event_dims, self.obs_scale)

    def elbo_terms(
        self, x: Tensor, num_samples: int = 1, qz_x: Distribution | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reconstruction term and KL of the ELBO, each (B,) nats.

        rec = E_q[log p(x|z)], averaged over `num_samples` reparameterized draws
        z = loc + scale * eps; kl = KL(q(z|x) || p(z)) in closed form.
        ELBO = rec - kl. Pass `qz_x` if the caller already computed `posterior(x)`.
        """
        qz_x = self.posterior(x) if qz_x is None else qz_x
        z = qz_x.rsample((num_samples,))  # (S, B, D)
        log_px_z = self.observation(z).log_prob(x)  # (S, B)
        kl = kl_divergence(qz_x, self.prior())
        return log_px_z.mean(0), kl

    def log_importance_weights(
        self, x: Tensor, num_samples: int, qz_x: Distribution | None = None
    ) -> Tensor:
        """log p(x|z_k) + log p(z_k) - log q(z_k|x) for z_k ~ q(z|x): (K, B) nats.

        Pass `qz_x` if the caller already computed `posterior(x)`.
        """
        qz_x = self.posterior(x) if qz_x is None else qz_x
        z = qz_x.sample((num_samples,))
        return self.observation(z).log_prob(x) + self.prior().log_prob(z) - qz_x.log_prob(z)

    # The user-facing API (see `vaelab.load_run`): no gradients, means rather than draws.

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Posterior means E_q[z|x]: (B, D)."""
        return self.posterior(x).mean

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Means of p(x|z) for z (B, D): (B, C, H, W), pixel probabilities or intensities."""
        return self.observation(z).mean

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode n draws z ~ p(z): (n, C, H, W) means of p(x|z).

        `generator` (a CPU generator) fixes the draws, e.g. to compare epochs.
        """
        z = torch.randn(n, self.prior_loc.shape[0], generator=generator)
        return self.decode(z.to(self.prior_loc.device))

    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(encode(x)): (B, C, H, W)."""
        return self.decode(self.encode(x))


def _diagonal_normal(loc: Tensor, scale: Tensor) -> Distribution:
    """N(loc, diag scale^2), event shape (D,). Not validated: the encoder's softplus keeps
    scale positive, and validation would cost host syncs in every training step."""
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
