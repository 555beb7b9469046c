"""The top-down hierarchy (model=topdown, `vaelab.models.topdown`) against oracles: with one
layer it is the one-layer VAE on the same weights; its log-weights equal the densities
written out here from its networks' layers with torch.distributions; the k-sample bound
rises with k; its extra pictures' methods; the combinations the composition check refuses."""

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaelab.estimators import iw_log_likelihood
from vaelab.models import build_vae
from vaelab.models.encoders import MIN_SCALE
from vaelab.models.objectives import ElboObjective, IwaeObjective
from vaelab.models.topdown import TopDownVAE

# The model options' classes (conf/model/topdown.yaml, topdown_conv.yaml, mlp.yaml).
TARGETS = {
    "topdown": "vaelab.models.topdown.TopDownVAE",
    "topdown_conv": "vaelab.models.topdown.TopDownConvVAE",
    "mlp": "vaelab.models.architectures.MLPVAE",
}

IMAGE_SHAPE = (1, 6, 6)
H, B = 12, 5


def images(n: int = B, shape: tuple[int, ...] = IMAGE_SHAPE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((n, *shape), 0.4), generator=generator)


def model(option: str, activation: str, **args) -> dict:
    """The model node of a conf/model option with small networks."""
    return {"_target_": TARGETS[option], "hidden_dim": H, "activation": activation, **args}


def tiny(latent_dims: tuple[int, ...], option: str = "topdown", shape=IMAGE_SHAPE) -> TopDownVAE:
    """A small hierarchy with every weight perturbed: the zero-initialised posterior and
    residual layers (q = p at the start) would hide a wrong wiring of those layers."""
    torch.manual_seed(0)
    node = model(option, "tanh", depth=None, latent_dims=latent_dims)
    vae = build_vae(node, shape, 0, "bernoulli", 0.1)
    assert isinstance(vae, TopDownVAE) and vae.depth == len(latent_dims)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return vae


def gaussian(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    return Independent(Normal(loc, scale), 1)


def by_hand(vae: TopDownVAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) of z (S, B, D) = (z1, ..., zL), every density a
    torch.distributions one of the networks' layers called one by one: (S, B)."""
    enc, dec, dims = vae.encoder, vae.decoder, vae.latent_dims
    zs = list(z.split(dims, dim=-1))
    # Bottom-up: d1 from the dense body, each d above it from a residual block.
    d = [enc.body(x)]
    for block in enc.up:
        d.append(d[-1] + block.out(block.body(d[-1])))
    raw = enc.head.linear(d[-1])
    q_loc, q_raw = raw.chunk(2, -1)
    log_q = gaussian(q_loc, torch.nn.functional.softplus(q_raw) + MIN_SCALE).log_prob(zs[-1])
    log_p = gaussian(torch.zeros(dims[-1]), torch.ones(dims[-1])).log_prob(zs[-1])
    # Top-down: the state from z_L, then each layer below.
    s = dec.input(zs[-1])
    for i in reversed(range(len(dims) - 1)):
        block = dec.blocks[i]
        s = s + block.out(block.body(s))
        p_loc, p_raw = dec.prior_heads[i].linear(s).chunk(2, -1)
        p_scale = torch.nn.functional.softplus(p_raw) + MIN_SCALE
        delta = dec.posterior_heads[i](torch.cat([s, d[i].expand(s.shape)], -1))
        d_loc, d_rho = delta.chunk(2, -1)
        log_p = log_p + gaussian(p_loc, p_scale).log_prob(zs[i])
        q = gaussian(p_loc + d_loc, p_scale * d_rho.exp() + MIN_SCALE)
        log_q = log_q + q.log_prob(zs[i])
        s = s + dec.merges[i](zs[i])
    logits = dec.output(s)
    log_px = Independent(Bernoulli(logits=logits), 3).log_prob(x.expand_as(logits))
    return log_px + log_p - log_q


@pytest.mark.parametrize("latent_dims", [(3,), (3, 2), (2, 3, 4, 2)])
def test_its_log_importance_weights_are_the_densities_written_out(latent_dims):
    vae, x = tiny(latent_dims), images()
    torch.manual_seed(5)
    log_w = vae.log_importance_weights(x, 6)  # the draw's own pass reused
    torch.manual_seed(5)
    z = vae.posterior(x).sample((6,))  # the same draws
    assert log_w.shape == (6, B) and z.shape == (6, B, sum(latent_dims))
    expected = by_hand(vae, x, z)
    assert torch.allclose(log_w, expected, atol=1e-4)
    # A copy of z is no draw of the model: scored by a fresh pass, with the same result.
    qz_x, pz = vae.posterior(x), vae.prior()
    fresh = vae.observation(z.clone()).log_prob(x) + pz.log_prob(z.clone())
    assert torch.allclose(fresh - qz_x.log_prob(z.clone()), expected, atol=1e-4)


def test_with_one_layer_it_is_the_one_layer_vae_on_the_same_weights():
    x = images()
    torch.manual_seed(0)
    vae = build_vae(model("mlp", "relu"), IMAGE_SHAPE, 4, "bernoulli", 0.1)
    topdown = build_vae(model("topdown", "relu", depth=1), IMAGE_SHAPE, 4, "bernoulli", 0.1)
    ours, theirs = list(topdown.parameters()), list(vae.parameters())
    assert [p.shape for p in ours] == [p.shape for p in theirs]
    with torch.no_grad():
        for mine, other in zip(ours, theirs, strict=True):
            mine.copy_(other)
    for objective in (ElboObjective(num_samples=3), IwaeObjective(k=4)):
        values = []
        for built in (vae, topdown):
            built.zero_grad()
            torch.manual_seed(7)
            out = objective(built, x)
            out["loss"].mean().backward()
            values.append((out, [p.grad.clone() for p in built.parameters()]))
        (out_a, grads_a), (out_b, grads_b) = values
        for key in out_a:
            assert torch.allclose(out_a[key], out_b[key], atol=1e-5), key
        for a, b in zip(grads_a, grads_b, strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    assert topdown.kl_splits and topdown.layers == (("z1", 4),)


def test_the_k_sample_bound_rises_with_k():
    vae, x = tiny((3, 2, 2)), images(256)
    torch.manual_seed(3)
    bounds = [iw_log_likelihood(vae, x, k)[0].mean().item() for k in (1, 5, 50)]
    assert bounds[0] < bounds[1] < bounds[2], bounds


def test_the_layer_kls_sum_to_the_kl_at_the_same_draw():
    vae, x = tiny((3, 2, 2)), images()
    qz_x = vae.posterior(x)
    torch.manual_seed(4)
    per_layer = vae.kl_per_layer(qz_x)  # (B, L)
    torch.manual_seed(4)
    z = qz_x.rsample()
    total = qz_x.log_prob(z) - vae.prior().log_prob(z)
    assert per_layer.shape == (B, 3)
    assert torch.allclose(per_layer.sum(-1), total, atol=1e-4)


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 64, 64), (1, 28, 28)])
def test_the_convolutional_hierarchy_scores_and_draws_colour_images(shape):
    vae, x = tiny((2, 2), "topdown_conv", shape), images(3, shape)
    assert any(type(m).__name__ == "ResidualCell" for m in vae.modules())
    log_w = vae.log_importance_weights(x, 2)
    assert log_w.shape == (2, 3) and torch.isfinite(log_w).all()
    assert vae.sample(2, temperature=0.5).shape == (2, *shape)


def test_reconstructions_from_the_top_layers_keep_less_of_x_with_fewer_layers():
    """Keeping all L layers of x's code reconstructs x best; the top layer alone less well
    (the lower layers then come from the prior), on average over images and draws."""
    vae, x = tiny((4, 3, 2)), images(64)
    torch.manual_seed(0)
    # Train briefly so that the code carries x: an untrained decoder ignores z.
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        ElboObjective()(vae, x)["loss"].mean().backward()
        optimizer.step()
    errors = [
        sum(((vae.reconstruct_from_top(x, k) - x) ** 2).mean().item() for _ in range(5))
        for k in (1, 3)
    ]
    assert errors[1] < errors[0], errors
    with pytest.raises(ValueError, match="k must be in"):
        vae.reconstruct_from_top(x, 4)


def test_samples_at_a_lower_temperature_vary_less():
    vae = tiny((4, 3, 2))
    generator = torch.Generator().manual_seed(0)
    cold = vae.sample(200, generator, temperature=0.1)
    warm = vae.sample(200, generator, temperature=1.0)
    assert cold.shape == warm.shape == (200, *IMAGE_SHAPE)
    assert cold.var(0).mean() < warm.var(0).mean()
