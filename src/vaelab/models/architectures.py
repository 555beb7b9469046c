"""The single-layer VAEs of conf/model: an encoder and a decoder network of one kind, the
prior and posterior options over their latent z of `latent_dim` dimensions. Each option
file names its class (`_target_`); `vaelab.models.build.build_vae` builds it. The
two-layer VAE is `vaelab.models.hvae.HierarchicalVAE`.
"""

from collections.abc import Mapping
from typing import Any

from torch import nn

from vaelab.likelihoods import Likelihood
from vaelab.models.capabilities import ConvNetworks, DenseNetworks
from vaelab.models.decoders import ConvDecoder, MLPDecoder
from vaelab.models.encoders import ConvEncoder, MLPEncoder
from vaelab.models.parts import build_posterior, build_prior
from vaelab.models.vae import VAE, as_likelihood


class NetworkVAE(VAE):
    """A VAE of one encoder and one decoder network of a kind (`encoder_class`,
    `decoder_class`, each built from a shape, latent_dim, hidden_dim, activation: the
    encoder's of x, the decoder's of the likelihood's parameters), and the prior and
    posterior options over its latent.

    Args:
        image_shape: (C, H, W).
        latent_dim: D.
        likelihood: p(x|z), a `vaelab.likelihoods.Likelihood`, whose parameters the
            decoder gives (`Likelihood.param_shape`); or an option's name, see `VAE`.
        obs_scale: of a likelihood given by its name only, see `VAE`.
        hidden_dim: width of the networks' hidden layers.
        activation: their nonlinearity (`vaelab.models.encoders.dense_layers`).
        prior: the prior option's node (`_target_` and arguments; None: N(0, I)).
        posterior: the posterior option's node (None: the diagonal Gaussian).
        value_range: see `VAE`.
    """

    encoder_class: type[nn.Module]
    decoder_class: type[nn.Module]

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dim: int,
        likelihood: Likelihood | str,
        obs_scale: float | None = None,
        *,
        hidden_dim: int,
        activation: str,
        prior: Mapping[str, Any] | None = None,
        posterior: Mapping[str, Any] | None = None,
        value_range: tuple[float, float] | None = (0.0, 1.0),
    ):
        image_shape, likelihood = tuple(image_shape), as_likelihood(likelihood, obs_scale)
        network = (latent_dim, hidden_dim, activation)
        super().__init__(
            self.encoder_class(image_shape, *network),
            self.decoder_class(likelihood.param_shape(image_shape), *network),
            latent_dim,
            likelihood,
            None,
            value_range,
            prior=build_prior(prior, latent_dim, image_shape),
            # a flow posterior conditions on the encoder's last hidden features
            posterior=build_posterior(posterior, latent_dim, context_dim=hidden_dim),
        )


class MLPVAE(NetworkVAE, DenseNetworks):
    """Encoder and decoder of two dense layers of `hidden_dim` units each (`activation`:
    relu, tanh, or gated dense layers). Arguments: `NetworkVAE`'s."""

    encoder_class, decoder_class = MLPEncoder, MLPDecoder

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dim: int,
        likelihood: Likelihood | str,
        obs_scale: float | None = None,
        hidden_dim: int = 512,
        activation: str = "relu",
        prior: Mapping[str, Any] | None = None,
        posterior: Mapping[str, Any] | None = None,
        value_range: tuple[float, float] | None = (0.0, 1.0),
    ):
        super().__init__(
            image_shape, latent_dim, likelihood, obs_scale, hidden_dim=hidden_dim,
            activation=activation, prior=prior, posterior=posterior, value_range=value_range,
        )  # fmt: skip


class ConvVAE(NetworkVAE, ConvNetworks):
    """Stride-2 convolutions then a dense layer of `hidden_dim` units, and their mirror
    (`vaelab.models.encoders.ConvEncoder`, `ConvDecoder`); `activation`: relu or tanh.
    Arguments: `NetworkVAE`'s."""

    encoder_class, decoder_class = ConvEncoder, ConvDecoder

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dim: int,
        likelihood: Likelihood | str,
        obs_scale: float | None = None,
        hidden_dim: int = 256,
        activation: str = "relu",
        prior: Mapping[str, Any] | None = None,
        posterior: Mapping[str, Any] | None = None,
        value_range: tuple[float, float] | None = (0.0, 1.0),
    ):
        super().__init__(
            image_shape, latent_dim, likelihood, obs_scale, hidden_dim=hidden_dim,
            activation=activation, prior=prior, posterior=posterior, value_range=value_range,
        )  # fmt: skip
