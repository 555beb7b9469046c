"""A prior of one's own: p(z) a product of Laplace densities."""

import torch
from torch.distributions import Distribution, Independent, Laplace

from vaelab.models.priors import Encode, Prior


class LaplacePrior(Prior):
    """p(z) = Π_d Laplace(z_d; 0, scale): heavier tails than N(0, I).

    Args:
        latent_dim: D, given by vaelab.
        scale: the scale b of every dimension.
    """

    factorised = True  # an Independent over the D dimensions

    def __init__(self, latent_dim: int, scale: float = 1.0):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.full((latent_dim,), scale), persistent=False)

    def distribution(self, encode: Encode | None = None) -> Distribution:
        return Independent(Laplace(self.loc, self.scale), 1)
