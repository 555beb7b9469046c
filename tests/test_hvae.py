"""The two-level VAE against direct computations: its log-weights written out from its
networks' outputs with Normal densities, its draws, its VampPrior over z2, and the gated layer."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from vaelab.estimators import iw_log_likelihood
from vaelab.models.architectures import MLPVAE
from vaelab.models.encoders import GatedDense
from vaelab.models.hvae import HierarchicalVAE, TwoLevel
from vaelab.models.objectives import ElboObjective, IwaeObjective

D1, D2, H, B = 3, 2, 8, 4
IMAGE_SHAPE = (1, 4, 4)


def tiny(prior: dict | None = None, activation: str = "gated") -> HierarchicalVAE:
    torch.manual_seed(0)
    vae = HierarchicalVAE(
        IMAGE_SHAPE, D1, "bernoulli", 0.1, hidden_dim=H, activation=activation, top_dim=D2,
        prior=prior,
    )  # fmt: skip
    assert isinstance(vae, HierarchicalVAE)
    return vae


def images() -> torch.Tensor:
    return torch.bernoulli(
        torch.full((B, *IMAGE_SHAPE), 0.4), generator=torch.Generator().manual_seed(1)
    )


def log_normal(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log N(z; loc, diag scale²) summed over the last dimension, by the formula."""
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def by_hand(vae: HierarchicalVAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z1,z2) + log p(z2) + log p(z1|z2) - log q(z2|x) - log q(z1|x,z2), each density
    from the networks' layers called one by one: (S, B)."""
    net = vae.encoder
    z1, z2 = z[..., :D1], z[..., D1:]
    loc2, scale2 = net.top_head(net.top_body(x))
    hx = net.bottom_x(x).expand(z.shape[0], -1, -1)
    loc1, scale1 = net.bottom_head(net.bottom_joint(torch.cat([hx, net.bottom_z2(z2)], -1)))
    dec = vae.decoder
    ploc1, pscale1 = dec.prior_head(dec.prior_body(z2))
    logits = dec.joint(torch.cat([dec.z1(z1), dec.z2(z2)], -1))
    log_px = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x.expand_as(logits), reduction="none"
    ).sum((-3, -2, -1))
    log_pz2 = log_normal(z2, torch.zeros(D2), torch.ones(D2))
    return (
        log_px
        + log_pz2
        + log_normal(z1, ploc1, pscale1)
        - log_normal(z2, loc2, scale2)
        - log_normal(z1, loc1, scale1)
    )


def test_its_log_importance_weights_are_the_densities_written_out():
    vae, x = tiny(), images()
    torch.manual_seed(5)
    log_w = vae.log_importance_weights(x, 6)
    torch.manual_seed(5)
    z = vae.posterior(x).sample((6,))  # the same draws
    assert log_w.shape == (6, B)
    assert torch.allclose(log_w, by_hand(vae, x, z), atol=1e-4)


def test_a_draw_of_q_is_z2_then_z1_given_it_and_carries_gradients():
    vae, x = tiny(), images()
    qz_x = vae.posterior(x)
    z = qz_x.rsample((3,))
    assert z.shape == (3, B, D1 + D2)
    # log q of the draw just made (its q(z1|x, z2) reused) equals a fresh evaluation.
    fresh = TwoLevel(qz_x.top, qz_x.bottom, D1).log_prob(z.detach().clone())
    assert torch.allclose(qz_x.log_prob(z), fresh, atol=1e-6)
    drawn = qz_x.sample((2,))  # and so for a draw without gradients
    fresh = TwoLevel(qz_x.top, qz_x.bottom, D1).log_prob(drawn.clone())
    assert torch.allclose(qz_x.log_prob(drawn), fresh, atol=1e-6)
    z.sum().backward()
    grads = [p.grad for p in vae.encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    # z1's distribution depends on z2: the same x with other z2 gives other q(z1|x, z2).
    bottom = qz_x.bottom
    assert not torch.allclose(bottom(torch.zeros(B, D2)).mean, bottom(torch.ones(B, D2)).mean)


def test_ancestral_samples_of_the_prior_have_the_densities_moments():
    """z2 ~ N(0, I), z1 ~ p(z1|z2): the z2 part of many draws has mean 0 and variance 1."""
    vae = tiny()
    torch.manual_seed(0)
    z = vae.prior().sample((20_000,))
    assert z.shape == (20_000, D1 + D2)
    assert torch.allclose(z[:, D1:].mean(0), torch.zeros(D2), atol=0.03)
    assert torch.allclose(z[:, D1:].var(0), torch.ones(D2), atol=0.05)
    z2 = z[:, D1:]
    expected_z1 = vae.decoder.bottom_prior(z2).mean
    # E[z1 | z2] is the network's mean: the residuals average to 0 against any function of z2.
    assert (z[:, :D1] - expected_z1).mean(0).abs().max() < 0.05


def test_the_vampprior_is_over_z2_and_with_one_pseudo_input_is_q_of_it():
    vae = tiny({"_target_": "vaelab.models.priors.VampPrior", "components": 1})
    u = vae.prior_model.pseudo_inputs()
    loc2, scale2 = vae.encoder(u)
    z = torch.randn(5, B, D1 + D2)
    z2 = z[..., D1:]
    expected = Independent(Normal(loc2[0], scale2[0]), 1).log_prob(z2)
    expected = expected + vae.decoder.bottom_prior(z2).log_prob(z[..., :D1])
    assert torch.allclose(vae.prior().log_prob(z), expected, atol=1e-5)


def test_the_objectives_and_estimators_take_it_with_a_monte_carlo_kl():
    vae, x = tiny(), images()
    torch.manual_seed(0)
    elbo = ElboObjective()
    values = elbo(vae, x)
    assert elbo.kl_kind == "monte_carlo"  # no closed form between two-level distributions
    assert torch.allclose(values["elbo"], values["rec"] - values["kl"], atol=1e-5)
    iwae = IwaeObjective(k=5)(vae, x)
    ll, _ = iw_log_likelihood(vae, x, 2000, check=False)
    # Averaged over images, the k=5 bound lies between the ELBO and the K=2000 estimate.
    assert values["elbo"].mean() <= iwae["iwae"].mean() + 0.5
    assert iwae["iwae"].mean() <= ll.mean() + 0.5


def test_a_gated_dense_layer_is_a_linear_map_times_a_sigmoid_gate():
    torch.manual_seed(0)
    layer = GatedDense(5, 3)
    x = torch.randn(7, 5)
    w, b = layer.linear.weight, layer.linear.bias
    expected = (x @ w[:3].T + b[:3]) * torch.sigmoid(x @ w[3:].T + b[3:])
    assert torch.allclose(layer(x), expected, atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "gated"])
def test_the_one_level_mlp_takes_the_gated_layer_and_keeps_its_weight_names(activation):
    vae = MLPVAE(IMAGE_SHAPE, 2, "bernoulli", 0.1, hidden_dim=H, activation=activation)
    names = set(vae.state_dict())
    if activation == "relu":  # the names the checkpoints of earlier versions hold
        assert {"encoder.body.1.weight", "encoder.body.3.weight", "decoder.net.0.weight"} <= names
    else:
        assert all(isinstance(m, GatedDense) for m in vae.encoder.body[1:])
