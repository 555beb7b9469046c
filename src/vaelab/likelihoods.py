"""The one place observation distributions p(x|z) are built from decoder outputs."""

from torch import Tensor
from torch.distributions import Bernoulli, ContinuousBernoulli, Distribution, Independent, Normal

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")
# Likelihoods whose support is {0, 1}: they need binarized data.
BINARY_LIKELIHOODS = ("bernoulli",)


def observation_dist(
    name: str, params: Tensor, event_dims: int, obs_scale: float = 0.1
) -> Distribution:
    """p(x|z) with `event_dims` trailing dimensions summed in `log_prob`.

    Args:
        name: one of `LIKELIHOODS`.
        params: unconstrained decoder output: logits, or the Gaussian mean.
        event_dims: how many trailing dimensions of `params` make one observation.
        obs_scale: standard deviation of the Gaussian likelihood (fixed, not learned).
    """
    # Densities in float32 even under mixed precision: log-probs sum hundreds of terms.
    params = params.float()
    if name == "bernoulli":
        base = Bernoulli(logits=params)
    elif name == "continuous_bernoulli":
        base = ContinuousBernoulli(logits=params)
    elif name == "gaussian":
        base = Normal(params, obs_scale)
    else:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return Independent(base, event_dims)
