"""The one place latent distributions are built: posterior q(z|x), prior p(z), p(x|z)."""

import itertools
import math
from functools import cached_property

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vaelab.errors import InputError
from vaelab.likelihoods import Likelihood, Observation
from vaelab.models.capabilities import ModelCapabilities, kl_splits
from vaelab.models.parts import build_likelihood
from vaelab.models.posteriors import GaussianPosterior, Posterior, kl_term
from vaelab.models.priors import Prior, StandardPrior

# Where a user gets batches that `VAE.check_data` accepts; the check's errors point there.
MODEL_READY = (
    "use model-ready batches (vaelab.model_batches(run_dir, split), or a VAEDataModule's "
    "model_batches(split))"
)
# Draws of z that estimate E_q[z|x] where q has no closed-form mean (a flow posterior).
MEAN_SAMPLES = 64


def as_likelihood(likelihood: Likelihood | str, obs_scale: float | None = None) -> Likelihood:
    """A likelihood as it is; an option's name (with `obs_scale`), the option's likelihood."""
    if isinstance(likelihood, Likelihood):
        return likelihood
    return build_likelihood(likelihood, obs_scale)


class VAE(nn.Module, ModelCapabilities):
    """A prior p(z), a posterior q(z|x) from the encoder, and p(x|z) from the decoder. What
    a model can combine with: `ModelCapabilities` (its subclass declares; the model options
    are subclasses, `vaelab.models.architectures`, `vaelab.models.hvae`).

    Args:
        encoder: maps x (B, ...) to (loc, scale), each (B, D); with a posterior that needs
            a context (`posterior.context_dim > 0`), `encoder(x, with_context=True)` gives
            (loc, scale, h).
        decoder: maps z (B, D) to the likelihood's parameters (B, *`likelihood.param_shape`
            of one x).
        latent_dim: D.
        likelihood: p(x|z), a `vaelab.likelihoods.Likelihood`; or, as runs made before
            conf/likelihood/ name it, an option's name ("gaussian"), with `obs_scale`.
        obs_scale: of a likelihood given by its name only: the Gaussian's standard
            deviation, the starting scale of a learned one.
        value_range: the interval the values of x lie in, which `check_data` enforces:
            (0, 1), the intensities of vaelab's images; None for data on the real line.
        prior: p(z), see `vaelab.models.priors` (default N(0, I)).
        posterior: q(z|x) from the encoder's features, see `vaelab.models.posteriors`
            (default the diagonal Gaussian N(loc, diag scale²)).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        likelihood: Likelihood | str,
        obs_scale: float | None = None,
        value_range: tuple[float, float] | None = (0.0, 1.0),
        prior: Prior | None = None,
        posterior: Posterior | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.likelihood = likelihood = as_likelihood(likelihood, obs_scale)
        self.value_range = value_range
        self.prior_model = prior or StandardPrior(latent_dim)
        self.posterior_model = posterior or GaussianPosterior(latent_dim)
        # The learned scale of p(x|z), one per sub-pixel, for the likelihoods that have one.
        self.log_obs_scale = None
        if likelihood.learned_scale:
            start = math.log(likelihood.obs_scale)
            self.log_obs_scale = nn.Parameter(torch.full(self.data_shape, start))

    @property
    def layers(self) -> tuple[tuple[str, int], ...]:
        """The stochastic layers' names and sizes, in the order of z's dimensions."""
        return (("z", self.latent_dim),)

    @property
    def density(self) -> bool:
        """log p(x|z) is a density of x (gaussian, continuous_bernoulli), not the mass of a
        discrete value (bernoulli, discretized_logistic): the probability of 8-bit data is
        then its `log_mass`, that of binary data is none (`log_px_z`). What the likelihood
        declares (`vaelab.models.capabilities.LikelihoodCapabilities`)."""
        return self.likelihood.density

    @property
    def kl_splits(self) -> bool:
        """The KL of q(z|x) from p(z) is a sum over the latent dimensions: what its posterior
        and prior declare (`vaelab.models.capabilities.kl_splits`), where q(z|x) is the
        posterior part's (not the model's `own_posterior`)."""
        return not self.own_posterior and kl_splits(self.posterior_model, self.prior_model)

    @property
    def diagonal_gaussian_posterior(self) -> bool:
        """q(z|x) is Independent(Normal(loc, scale), 1): the posterior part declares it, and
        it is q(z|x) itself (not the top layer's of a model's `own_posterior`)."""
        return not self.own_posterior and self.posterior_model.diagonal_gaussian

    @property
    def standard_normal_prior(self) -> bool:
        """p(z) is N(0, I) over the whole of z (not only over the top layer of a hierarchy):
        the prior declares it (`standard_normal`) and covers every latent dimension."""
        return self.prior_model.standard_normal and self.prior_model.latent_dim == self.latent_dim

    @property
    def decoder_input_dim(self) -> int:
        """The length of the decoder's input: D, or more for a model that joins something
        to z (a conditional VAE's label code)."""
        return self.latent_dim

    @property
    def device(self) -> torch.device:
        """Where the model's weights (or, without any, its buffers) are."""
        return next(itertools.chain(self.parameters(), self.buffers()), torch.empty(0)).device

    def posterior(self, x: Tensor) -> Distribution:
        """q(z|x): batch shape (B,), event shape (D,)."""
        if self.posterior_model.context_dim:
            return self.posterior_model(*self.encoder(x, with_context=True))
        return self.posterior_model(*self.encoder(x))

    def prior(self) -> Distribution:
        """p(z): event shape (D,). Build it once per batch: the VampPrior encodes its
        pseudo-inputs each time (into the Gaussians N(loc, diag scale²) of the encoder, also
        under a flow posterior, whose inverse the prior's density would need K times)."""
        return self.prior_model.distribution(self._encode_gaussian)

    def _encode_gaussian(self, u: Tensor) -> Distribution:
        loc, scale = self.encoder(u)[:2]
        return GaussianPosterior(self.latent_dim)(loc, scale)

    def observation(self, z: Tensor) -> Observation:
        """p(x|z) for z of shape (..., D): batch shape (...), event shape of one x."""
        params = self.decoder(z.reshape(-1, z.shape[-1]))
        params = params.reshape(*z.shape[:-1], *params.shape[1:])
        event_dims = params.dim() - (z.dim() - 1)
        return self.likelihood.observation(params, event_dims, self.log_obs_scale)

    def elbo_terms(
        self, x: Tensor, num_samples: int = 1, qz_x: Distribution | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reconstruction term and KL of the ELBO, each (B,) nats.

        rec = E_q[log p(x|z)], averaged over `num_samples` reparameterized draws; kl =
        KL(q(z|x) || p(z)) in closed form where torch.distributions has it, else the Monte
        Carlo estimate at the same draws. ELBO = rec - kl. Pass `qz_x` if the caller already
        computed `posterior(x)`.
        """
        qz_x = self.posterior(x) if qz_x is None else qz_x
        z = qz_x.rsample((num_samples,))  # (S, B, D)
        log_px_z = self.observation(z).log_prob(x)  # (S, B)
        kl, _ = kl_term(qz_x, self.prior(), z)
        return log_px_z.mean(0), kl

    def log_px_z(self, px_z: Observation, x: Tensor, mass: bool = False) -> Tensor:
        """log p(x|z): (...) nats, the batch shape of `px_z`. With `mass`, stacked with
        log P(x|z), the probability of the discrete data x, (2, ...): log p(x|z) itself
        for a likelihood of discrete values; for a density (`density`) of 8-bit levels,
        the mass of each level's bin (`vaelab.likelihoods.Observation.log_mass`), a second
        evaluation of the likelihood at the same parameters."""
        log_px_z = px_z.log_prob(x)
        if not mass:
            return log_px_z
        return torch.stack([log_px_z, px_z.log_mass(x) if self.density else log_px_z])

    def log_importance_weights(
        self,
        x: Tensor,
        num_samples: int,
        qz_x: Distribution | None = None,
        pz: Distribution | None = None,
        mass: bool = False,
    ) -> Tensor:
        """log p(x|z_k) + log p(z_k) - log q(z_k|x) for z_k ~ q(z|x): (K, B) nats; with
        `mass`, (2, K, B): also the weights with log P(x|z_k), the probability of the
        discrete data, at the same draws (`log_px_z`).

        Pass `qz_x` and `pz` if the caller already computed `posterior(x)` and `prior()`.
        """
        qz_x = self.posterior(x) if qz_x is None else qz_x
        pz = self.prior() if pz is None else pz
        z = qz_x.sample((num_samples,))
        return self.log_px_z(self.observation(z), x, mass) + pz.log_prob(z) - qz_x.log_prob(z)

    # The user-facing API (see `vaelab.load_run`): no gradients, means rather than draws;
    # the methods that take x check it first.

    @cached_property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one x, (C, H, W) for images: the decoder's output for one latent, with
        the channels of the data its parameters are of (a mixture has several per channel)."""
        with torch.no_grad():
            # `forward`, not the call: a compiled decoder would recompile for batch size 1.
            z = torch.zeros(1, self.decoder_input_dim, device=self.device)
            channels, *rest = self.decoder.forward(z).shape[1:]
            return (self.likelihood.data_channels(channels), *rest)

    @torch.no_grad()
    def check_data(self, x: Tensor) -> None:
        """Raise InputError unless x is a batch this VAE can score: floating point, shaped
        (B, *data_shape), its values finite, within `value_range` and, for a Bernoulli
        likelihood, 0 or 1. Two reductions over x and one host sync, once per call of the
        public methods; the training steps, whose batches the datamodule makes, skip it."""
        if x.dtype == torch.uint8:
            raise InputError(f"x holds uint8 values 0..255: {MODEL_READY}, or x.float() / 255")
        if not x.is_floating_point():
            raise InputError(f"x has dtype {x.dtype}, not floating point: {MODEL_READY}")
        if x.shape[1:] != self.data_shape:
            wanted = ", ".join(["B", *map(str, self.data_shape)])
            fix = "add the batch dimension, x[None]" if x.shape == self.data_shape else MODEL_READY
            raise InputError(f"x has shape {tuple(x.shape)}, this VAE takes ({wanted}): {fix}")
        if x.numel() == 0:
            return
        binary = self.likelihood.binary
        lo, hi = torch.aminmax(x)
        # x (1 - x) is 0 only at 0 and 1.
        grey = (x * (1 - x)).ne(0).any().to(x.dtype) if binary else torch.zeros_like(lo)
        lo, hi, grey = torch.stack([lo, hi, grey]).tolist()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InputError(f"x holds NaN or infinite values (min {lo}, max {hi})")
        if self.value_range is not None:
            low, high = self.value_range
            if lo < low or hi > high:
                fix = ", or x / 255" if 1 < hi <= 255 and lo >= 0 else ""
                raise InputError(
                    f"x holds values in [{lo:g}, {hi:g}], this VAE takes values in "
                    f"[{low:g}, {high:g}]: {MODEL_READY}{fix}"
                )
        if grey:
            raise InputError(
                f"likelihood={self.likelihood.name} needs binary pixels (0 or 1), got other values "
                f"in [{lo:g}, {hi:g}]: binarize, e.g. torch.bernoulli(x), or {MODEL_READY}"
            )

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Posterior means E_q[z|x]: (B, D), for x as `check_data` describes."""
        self.check_data(x)
        return posterior_mean(self.posterior(x))

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Means of p(x|z) for z (B, D): (B, C, H, W), pixel probabilities or intensities."""
        return self.observation(z).mean

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode n draws z ~ p(z): (n, C, H, W) means of p(x|z).

        `generator` (a CPU generator) fixes the draws, e.g. to compare epochs.
        """
        device = self.device
        if self.standard_normal_prior:  # the draws of earlier versions
            z = torch.randn(n, self.latent_dim, generator=generator)
            return self.decode(z.to(device))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if generator is not None:
                torch.manual_seed(generator.initial_seed())
            return self.decode(self.prior().sample((n,)))

    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(encode(x)): (B, C, H, W)."""
        return self.decode(self.encode(x))


def posterior_mean(qz_x: Distribution) -> Tensor:
    """E_q[z|x]: (B, D); for a posterior without a closed-form mean (a flow), the mean of
    `MEAN_SAMPLES` draws (see `posterior_mean_and_noise` for its Monte Carlo variance)."""
    return posterior_mean_and_noise(qz_x)[0]


def posterior_mean_and_noise(qz_x: Distribution) -> tuple[Tensor, Tensor | None]:
    """E_q[z|x] (B, D) and, where it is a Monte Carlo mean, its estimated variance (B, D)
    (Var_q[z|x] / `MEAN_SAMPLES`); None for a closed-form mean."""
    try:
        return qz_x.mean, None
    except NotImplementedError:
        z = qz_x.sample((MEAN_SAMPLES,))
        return z.mean(0), z.var(0) / MEAN_SAMPLES
