"""The maths of the posteriors: IAF against the change of variables; KL closed form vs MC."""

import functools
import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import Independent, Normal, kl_divergence

from vaelab.models.posteriors import GaussianPosterior, IAFPosterior, kl_term
from vaelab.models.priors import MixturePrior, StandardPrior

B, D, CONTEXT, HIDDEN = 4, 3, 5, 16


def features(dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Encoder outputs: loc (B, D), scale (B, D), context (B, CONTEXT)."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(B, D, generator=g, dtype=dtype)
    scale = 0.5 + torch.rand(B, D, generator=g, dtype=dtype)
    return loc, scale, torch.randn(B, CONTEXT, generator=g, dtype=dtype)


def iaf(steps: int = 2, random_weights: bool = True, dtype=torch.float32) -> IAFPosterior:
    """An IAF; with random_weights every weight (the zero last layers too) is redrawn."""
    torch.manual_seed(0)
    posterior = IAFPosterior(D, steps, CONTEXT, HIDDEN).to(dtype)
    if random_weights:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param in posterior.parameters():
                param.copy_(0.5 * torch.randn(param.shape, generator=g, dtype=dtype))
    return posterior


def test_iaf_with_zero_last_layer_is_its_base_gaussian():
    loc, scale, context = features()
    qz_x = iaf(random_weights=False)(loc, scale, context)
    base = GaussianPosterior(D)(loc, scale)
    torch.manual_seed(0)
    z = qz_x.rsample((7,))
    torch.manual_seed(0)
    assert torch.equal(z, base.rsample((7,)))
    # The cached forward pass, and the inverse of a z the flow has not seen.
    assert torch.allclose(qz_x.log_prob(z), base.log_prob(z), atol=1e-6)
    assert torch.allclose(qz_x.log_prob(z.clone()), base.log_prob(z), atol=1e-6)


def test_iaf_log_prob_is_the_change_of_variables_with_the_autograd_jacobian():
    loc, scale, context = features(torch.float64)
    qz_x = iaf(random_weights=True, dtype=torch.float64)(loc, scale, context)
    base = Independent(Normal(loc, scale), 1)
    x = base.sample()  # (B, D)

    def flow(v):
        return functools.reduce(lambda v, transform: transform._call(v), qz_x.transforms, v)

    z = flow(x)
    # The flow acts on each image alone, so dz/dx is block diagonal: keep block (b, b).
    full = jacobian(flow, x)  # (B, D, B, D)
    blocks = torch.stack([full[b, :, b, :] for b in range(B)])
    expected = base.log_prob(x) - torch.linalg.slogdet(blocks).logabsdet
    assert not torch.allclose(z, x)  # the flow is not the identity
    assert torch.allclose(qz_x.log_prob(z), expected, rtol=0, atol=1e-10)
    # The inverse: D sequential passes per step recover x from z.
    inverse = functools.reduce(lambda v, t: t.inv(v), reversed(qz_x.transforms), z.clone())
    assert torch.allclose(inverse, x, rtol=0, atol=1e-10)


def test_each_iaf_step_is_autoregressive_in_its_order_and_the_orders_alternate():
    loc, scale, context = features(torch.float64)
    qz_x = iaf(steps=3, random_weights=True, dtype=torch.float64)(loc[:1], scale[:1], context[:1])
    orders = [step.made.order.tolist() for step in qz_x.transforms]
    assert orders == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]
    x = torch.randn(1, D, dtype=torch.float64)
    for step in qz_x.transforms:
        order = step.made.order
        jac = jacobian(step._call, x)[0, :, 0, :]  # (D, D): row i = dz_i/dx
        jac = jac[order][:, order]  # rows and columns in the step's order
        # z_i depends on the x before it only; the strictly lower part shows it does.
        assert torch.equal(jac.triu(1), torch.zeros_like(jac))
        assert (jac.tril(-1).abs().sum(1)[1:] > 0).all()
        log_diag = jac.diagonal().abs().log().sum()
        assert torch.allclose(step.log_abs_det_jacobian(x, step(x)), log_diag)


def test_iaf_samples_and_log_probs_have_the_batch_shape_and_gradients_reach_everything():
    loc, scale, context = (t.requires_grad_() for t in features())
    posterior = iaf(random_weights=True)
    qz_x = posterior(loc, scale, context)
    z = qz_x.rsample((6,))
    log_qz_x = qz_x.log_prob(z)
    assert z.shape == (6, B, D) and log_qz_x.shape == (6, B)
    (z.sum() + log_qz_x.sum()).backward()
    inputs = [("loc", loc), ("scale", scale), ("context", context)]
    for name, tensor in inputs + list(posterior.named_parameters()):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, name


def test_gaussian_posterior_is_the_diagonal_normal():
    loc, scale, _ = features()
    qz_x = GaussianPosterior(D)(loc, scale)
    z = torch.randn(5, B, D)
    assert (qz_x.batch_shape, qz_x.event_shape) == ((B,), (D,))
    assert torch.allclose(qz_x.log_prob(z), Normal(loc, scale).log_prob(z).sum(-1))


def test_kl_term_is_closed_form_for_gaussian_and_standard_prior():
    loc, scale, _ = features()
    qz_x, pz = GaussianPosterior(D)(loc, scale), StandardPrior(D).distribution()
    kl, kind = kl_term(qz_x, pz, qz_x.rsample((3,)))
    assert kind == "closed_form"
    assert torch.equal(kl, kl_divergence(qz_x, pz))


@pytest.mark.parametrize("case", ["iaf_posterior", "mixture_prior"])
def test_monte_carlo_kl_matches_the_closed_form_within_its_standard_error(case):
    # Pairs that torch.distributions has no KL for but that equal a Gaussian pair: an IAF
    # with zero last layers is its base Gaussian, a one-component mixture N(0, I) is N(0, I).
    loc, scale, context = features()
    gaussian, standard = GaussianPosterior(D)(loc, scale), StandardPrior(D).distribution()
    if case == "iaf_posterior":
        qz_x, pz = iaf(random_weights=False)(loc, scale, context), standard
    else:
        mixture = MixturePrior(D, components=1)
        with torch.no_grad():
            mixture.loc.zero_()
        qz_x, pz = gaussian, mixture.distribution()
    torch.manual_seed(0)
    num_samples = 100_000
    with torch.no_grad():
        z = qz_x.rsample((num_samples,))
        kl, kind = kl_term(qz_x, pz, z)
        log_ratio = qz_x.log_prob(z) - pz.log_prob(z)  # (S, B)
    standard_error = log_ratio.std(0) / math.sqrt(num_samples)
    assert kind == "monte_carlo"
    assert torch.allclose(kl, log_ratio.mean(0))
    assert ((kl - kl_divergence(gaussian, standard)).abs() < 4 * standard_error).all()
