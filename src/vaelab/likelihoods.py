"""The one place observation distributions p(x|z) are built from decoder outputs."""

from torch import Tensor
from torch.distributions import Bernoulli, ContinuousBernoulli, Distribution, Independent, Normal

# The names, and those whose support is {0, 1} (they need binarized data): the schema's.
from vaelab.schema import BINARY_LIKELIHOODS, LIKELIHOODS

__all__ = ["BINARY_LIKELIHOODS", "LIKELIHOODS", "observation_dist"]


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
    # No argument validation: its check that x is in the support is a full pass over x and
    # a host sync in every log_prob (with K samples, over x expanded K times). The data
    # module and the config check (`vaelab.schema.check_likelihood`) guarantee the support.
    if name == "bernoulli":
        base = Bernoulli(logits=params, validate_args=False)
    elif name == "continuous_bernoulli":
        base = ContinuousBernoulli(logits=params, validate_args=False)
    elif name == "gaussian":
        base = Normal(params, obs_scale, validate_args=False)
    else:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return Independent(base, event_dims, validate_args=False)
