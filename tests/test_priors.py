"""The maths of the priors against direct computations, and shapes for every prior × posterior."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from vaelab.models.capabilities import StandardNormalPrior
from vaelab.models.encoders import MLPEncoder
from vaelab.models.posteriors import GaussianPosterior, IAFPosterior, Posterior, kl_term
from vaelab.models.priors import (
    PSEUDO_INPUTS_MEAN,
    PSEUDO_INPUTS_STD,
    DiagonalNormalMixture,
    MixturePrior,
    Prior,
    StandardPrior,
    VampPrior,
)
from vaelab.models.vae import VAE

B, D, S = 4, 3, 6
IMAGE_SHAPE = (1, 4, 4)
PRIORS = ("standard", "mixture", "vamp")
POSTERIORS = ("gaussian", "iaf")


class Encoder(nn.Module):
    """Images -> q(z|x): a real MLP encoder for (loc, scale), a linear map for the flow's
    context h, and a posterior; counts its calls."""

    def __init__(self, posterior: Posterior):
        super().__init__()
        self.body = MLPEncoder(IMAGE_SHAPE, D, hidden_dim=8)
        self.context = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(IMAGE_SHAPE), 5))
        self.posterior = posterior
        self.calls = 0

    def forward(self, x: torch.Tensor) -> Distribution:
        self.calls += 1
        loc, scale = self.body(x)
        if isinstance(self.posterior, IAFPosterior):
            return self.posterior(loc, scale, self.context(x))
        return self.posterior(loc, scale)


def make_posterior(name: str) -> Posterior:
    if name == "gaussian":
        return GaussianPosterior(D)
    posterior = IAFPosterior(D, steps=2, context_dim=5, hidden_dim=8)
    with torch.no_grad():  # a flow that is not the identity
        for made in posterior.mades:
            made.output.weight.normal_(0, 0.5)
    return posterior


def make_prior(name: str, components: int = 5) -> Prior:
    if name == "standard":
        return StandardPrior(D)
    if name == "mixture":
        prior = MixturePrior(D, components)
        with torch.no_grad():
            prior.log_scale.normal_(0, 0.5)
        return prior
    return VampPrior(D, components, IMAGE_SHAPE)


def images(batch_size: int = B) -> torch.Tensor:
    return torch.rand(batch_size, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(1))


def test_one_component_mixture_is_its_gaussian():
    torch.manual_seed(0)
    prior = make_prior("mixture", components=1)
    gaussian = Independent(Normal(prior.loc[0], prior.log_scale[0].exp()), 1)
    z = 2 * torch.randn(S, B, D)
    assert torch.allclose(prior.distribution().log_prob(z), gaussian.log_prob(z), atol=1e-6)


def test_mixture_log_prob_is_the_log_sum_exp_over_components():
    torch.manual_seed(0)
    prior = make_prior("mixture", components=5)
    z = 2 * torch.randn(S, B, D, dtype=torch.float64)
    loc, scale = prior.loc.double(), prior.log_scale.double().exp()  # (K, D)
    # log N(z; μ_k, σ_k²) by hand, (S, B, K), then log (1/K) Σ_k exp(...).
    sq = ((z[..., None, :] - loc) / scale).square()
    log_normal = (-0.5 * sq - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    expected = torch.logsumexp(log_normal, dim=-1) - math.log(5)
    log_pz = prior.distribution().log_prob(z.float())
    assert torch.allclose(log_pz.double(), expected, rtol=0, atol=1e-5)


def test_the_matrix_product_mixture_density_is_the_broadcast_one_in_value_and_gradient():
    """Small and large scales, z far from every mean: the expanded square in float64 against
    MixtureSameFamily's broadcast form in float64; and under bf16 autocast the same value."""
    torch.manual_seed(0)
    K, dim = 50, 16
    loc = (3 * torch.randn(K, dim)).double().requires_grad_()
    log_scale = torch.empty(K, dim).uniform_(math.log(0.01), math.log(3)).double().requires_grad_()
    logits = torch.randn(K).double()
    z = torch.cat([loc.detach()[:8] + 0.01 * torch.randn(8, dim), 10 * torch.randn(8, dim)])
    z = z.float().double().requires_grad_()  # values a float32 caller can give
    broadcast = MixtureSameFamily(
        Categorical(logits=logits), Independent(Normal(loc, log_scale.exp()), 1)
    )
    fast = DiagonalNormalMixture(logits, loc, log_scale.exp())
    expected, got = broadcast.log_prob(z), fast.log_prob(z)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-8)
    for g_expected, g_got in zip(
        torch.autograd.grad(expected.sum(), (loc, log_scale, z)),
        torch.autograd.grad(got.sum(), (loc, log_scale, z)),
        strict=True,
    ):
        assert torch.allclose(g_got, g_expected, rtol=1e-8, atol=1e-8)
    fast32 = DiagonalNormalMixture(
        logits.float(), loc.detach().float(), log_scale.detach().exp().float()
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got32 = fast32.log_prob(z.detach().float())
    assert got32.dtype == torch.float32
    assert torch.allclose(got32.double(), expected.detach(), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("posterior", POSTERIORS)
def test_vampprior_with_one_pseudo_input_is_the_posterior_of_that_input(posterior):
    torch.manual_seed(0)
    prior, encode = VampPrior(D, 1, IMAGE_SHAPE), Encoder(make_posterior(posterior))
    z = 2 * torch.randn(S, B, D)
    qz_u = encode(prior.pseudo_inputs())  # batch shape (1,)
    assert torch.allclose(prior.distribution(encode).log_prob(z), qz_u.log_prob(z), atol=1e-5)


def test_vampprior_encodes_its_pseudo_inputs_once_per_distribution_call():
    torch.manual_seed(0)
    prior, encode = VampPrior(D, 7, IMAGE_SHAPE), Encoder(GaussianPosterior(D))
    pz = prior.distribution(encode)
    pz.log_prob(torch.randn(S, B, D))
    pz.log_prob(torch.randn(2 * S, D))
    pz.sample((S,))
    assert encode.calls == 1
    prior.distribution(encode)
    assert encode.calls == 2


def test_vampprior_pseudo_inputs_start_as_in_tomczak_and_welling():
    torch.manual_seed(0)
    prior = VampPrior(D, 500, (1, 28, 28))
    assert prior.pseudo_inputs().shape == (500, 1, 28, 28)
    assert prior.pseudo_inputs().min() > 0 and prior.pseudo_inputs().max() < 1
    assert abs(prior.pseudo_logits.mean() - PSEUDO_INPUTS_MEAN) < 1e-3
    assert abs(prior.pseudo_logits.std() - PSEUDO_INPUTS_STD) < 1e-3


def test_vampprior_refuses_an_encoder_whose_batch_is_not_its_pseudo_inputs():
    prior = VampPrior(D, 7, IMAGE_SHAPE)
    with pytest.raises(ValueError, match="expected"):
        prior.distribution(lambda u: GaussianPosterior(D)(torch.zeros(1, D), torch.ones(1, D)))


@pytest.mark.parametrize("name", ["mixture", "vamp"])
def test_gradients_reach_the_prior_parameters(name):
    torch.manual_seed(0)
    prior, encode = make_prior(name), Encoder(GaussianPosterior(D))
    prior.distribution(encode).log_prob(torch.randn(S, B, D)).sum().backward()
    trained = list(prior.named_parameters())
    if name == "vamp":  # the VampPrior's components are the encoder's posteriors
        trained += list(encode.body.named_parameters())
    assert trained
    for param_name, param in trained:
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("posterior", POSTERIORS)
@pytest.mark.parametrize("prior", PRIORS)
def test_shapes_and_kl_kind_for_every_prior_and_posterior(prior, posterior):
    torch.manual_seed(0)
    pz_module, encode = make_prior(prior), Encoder(make_posterior(posterior))
    qz_x = encode(images())
    pz = pz_module.distribution(encode)
    z = qz_x.rsample((S,))
    assert (qz_x.batch_shape, qz_x.event_shape) == ((B,), (D,))
    assert (pz.batch_shape, pz.event_shape) == ((), (D,))
    assert z.shape == (S, B, D)
    assert qz_x.log_prob(z).shape == (S, B)
    assert pz.log_prob(z).shape == (S, B)
    assert pz.sample((S,)).shape == (S, D)
    kl, kind = kl_term(qz_x, pz, z)
    assert kl.shape == (B,) and torch.isfinite(kl).all()
    closed = prior == "standard" and posterior == "gaussian"
    assert kind == ("closed_form" if closed else "monte_carlo")


class UnitNormalPrior(Prior, StandardNormalPrior):
    """A user's N(0, I), not a StandardPrior: standard normal, as it declares."""

    def distribution(self, encode=None) -> Distribution:
        zeros = torch.zeros(self.latent_dim)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)


@pytest.mark.parametrize(
    ("prior", "standard"),
    [
        (lambda d: UnitNormalPrior(d), True),
        (lambda d: StandardPrior(d), True),
        (lambda d: MixturePrior(d, 3), False),
        (lambda d: StandardPrior(d - 1), False),  # over part of z only, as hvae's over z2
    ],
)
def test_a_standard_normal_prior_is_what_the_prior_declares_not_its_class(prior, standard):
    """`VAE.standard_normal_prior` (samples drawn with torch.randn, the draws of earlier
    versions) reads the prior's declaration over the whole of z, not its class name."""
    d = 3
    vae = VAE(MLPEncoder((1, 4, 4), d, 8), nn.Linear(d, 16), d, "bernoulli", prior=prior(d))
    assert vae.standard_normal_prior is standard
