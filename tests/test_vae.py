"""The maths of `VAE`: KL, reparameterization, the ELBO against an exact log p(x), shapes."""

import math

import pytest
import torch
from oracles import LinearGaussian
from torch.distributions import kl_divergence

from vaelab.likelihoods import LIKELIHOODS
from vaelab.lit_module import LitVAE
from vaelab.models import ARCHS


def small_vae(arch: str = "mlp", likelihood: str = "bernoulli") -> LitVAE:
    return LitVAE(arch=arch, latent_dim=4, hidden_dim=32, likelihood=likelihood)


def images(likelihood: str, batch_size: int = 3) -> torch.Tensor:
    x = torch.rand(batch_size, 1, 28, 28)
    return x.round() if likelihood == "bernoulli" else x


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    vae = small_vae().vae
    with torch.no_grad():
        qz_x, pz = vae.posterior(images("bernoulli", 4)), vae.prior()
        z = qz_x.sample((200_000,))
        log_ratio = qz_x.log_prob(z) - pz.log_prob(z)  # (S, B)
        kl = kl_divergence(qz_x, pz)
    standard_error = log_ratio.std(0) / math.sqrt(log_ratio.shape[0])
    assert (kl > 0).all()
    assert ((log_ratio.mean(0) - kl).abs() < 4 * standard_error).all()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("with_kl", [True, False], ids=["elbo", "rec_only"])
def test_gradients_reach_encoder_through_rsample(arch, with_kl):
    # The reconstruction term alone depends on the encoder only through z = loc + scale * eps.
    torch.manual_seed(0)
    vae = small_vae(arch).vae
    rec, kl = vae.elbo_terms(images("bernoulli"))
    loss = -(rec - kl).mean() if with_kl else -rec.mean()
    loss.backward()
    for name, param in vae.encoder.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_oracle_elbo_is_exact_for_the_exact_posterior():
    model = LinearGaussian()
    x = model.sample(5)
    exact = model.log_px(x)
    assert torch.allclose(model.elbo(model.vae(), x), exact, rtol=0, atol=1e-8)
    # Every ELBO integrand log p(x|z) + log p(z) - log q(z|x) equals log p(x), up to float32.
    with torch.no_grad():
        log_w = model.vae().log_importance_weights(x, 1000)
    assert (log_w.double() - exact).abs().max() < 1e-4


@pytest.mark.parametrize("perturbed", [False, True])
def test_elbo_terms_match_closed_form_elbo_and_bound_log_px(perturbed):
    torch.manual_seed(0)
    model = LinearGaussian()
    vae = model.vae(loc_shift=0.5, scale_factor=1.5) if perturbed else model.vae()
    x = model.sample(5)
    num_samples = 100_000
    with torch.no_grad():
        rec, kl = vae.elbo_terms(x, num_samples)
        log_px_z = vae.observation(vae.posterior(x).sample((num_samples,))).log_prob(x)
    standard_error = log_px_z.double().std(0) / math.sqrt(num_samples)
    elbo, exact = (rec - kl).double(), model.log_px(x)
    assert ((elbo - model.elbo(vae, x)).abs() < 4 * standard_error).all()
    if perturbed:
        assert (elbo < exact - 4 * standard_error).all()
        assert (exact - elbo > 0.5).all()  # the gap KL(q || p(z|x)) is about 1 nat here
    else:
        assert ((elbo - exact).abs() < 4 * standard_error).all()


def test_more_samples_same_mean_smaller_variance():
    torch.manual_seed(0)
    model = LinearGaussian()
    vae = model.vae(loc_shift=0.5, scale_factor=1.5)
    # Rows of one repeated x are independent repeats of the estimator.
    x = model.sample(1).expand(4000, -1)
    num_samples = 16
    with torch.no_grad():
        rec_1, kl_1 = vae.elbo_terms(x, 1)
        rec_s, kl_s = vae.elbo_terms(x, num_samples)
    assert torch.equal(kl_1, kl_s)
    var_1, var_s = rec_1.var(), rec_s.var()
    assert (rec_1.mean() - rec_s.mean()).abs() < 4 * ((var_1 + var_s) / len(x)).sqrt()
    assert 0.75 * num_samples < var_1 / var_s < 1.25 * num_samples


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_signs(arch, likelihood):
    torch.manual_seed(0)
    vae = small_vae(arch, likelihood).vae
    x = images(likelihood)
    with torch.no_grad():
        loc, scale = vae.encoder(x)
        rec, kl = vae.elbo_terms(x, num_samples=2)
        log_w = vae.log_importance_weights(x, 5)
    assert loc.shape == scale.shape == (3, 4)
    assert (scale > 0).all()
    assert rec.shape == kl.shape == (3,)
    assert torch.isfinite(rec).all() and torch.isfinite(kl).all()
    assert (kl >= 0).all()
    assert log_w.shape == (5, 3)
    assert torch.isfinite(log_w).all()
