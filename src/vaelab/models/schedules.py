"""Schedules of the KL weight beta over training: `weight(step, total_steps) -> float`.

`step` counts optimizer steps from 0 (Lightning's `global_step`); `total_steps` is the
length of training in steps (`trainer.estimated_stepping_batches`), which only the
cyclical schedule reads.
"""

import math
from dataclasses import dataclass

from vaelab.errors import ConfigError
from vaelab.schema import check_fields


def _check(schedule: object) -> None:
    """The fields that are knobs (beta, and beta_schedule's), by their rules in the schema."""
    check_fields(vars(schedule), "beta_schedule.", "")


@dataclass(frozen=True)
class Constant:
    """beta at every step."""

    beta: float = 1.0

    def __post_init__(self):
        _check(self)

    def weight(self, step: int, total_steps: int = 0) -> float:
        return self.beta


@dataclass(frozen=True)
class LinearWarmup:
    """beta * min(1, (step + 1) / warmup_steps): reaches beta after `warmup_steps` steps.

    `warmup_steps` may be fractional (e.g. warm-up epochs times batches per epoch); 0 is no
    warm-up. The first step already has weight beta / warmup_steps, as in `LitVAE.kl_weight`.
    """

    beta: float = 1.0
    warmup_steps: float = 0.0

    def __post_init__(self):
        _check(self)
        if not self.warmup_steps >= 0:  # epochs times batches: not a knob
            raise ConfigError(
                f"warmup_steps must be >= 0, got {self.warmup_steps}; 0 turns the warm-up off"
            )

    def weight(self, step: int, total_steps: int = 0) -> float:
        if self.warmup_steps == 0:
            return self.beta
        return self.beta * min(1.0, (step + 1) / self.warmup_steps)


@dataclass(frozen=True)
class Cyclical:
    """Cyclical annealing (Fu et al. 2019): training is cut into `cycles` equal periods; in
    each, the weight rises linearly from 0 over the first `ratio` of the period, then stays at
    beta. Past `total_steps` (e.g. training extended on resume) it stays at beta.

    With tau = (step mod P) / P for the period P = total_steps / cycles, the weight is
    beta * min(1, tau / ratio): 0 at the first step of each period, as in the paper's code.
    """

    beta: float = 1.0
    cycles: int = 4
    ratio: float = 0.5

    def __post_init__(self):
        _check(self)

    def weight(self, step: int, total_steps: int) -> float:
        if total_steps <= 0:
            raise ConfigError(
                f"the cyclical beta schedule needs the number of training steps, got "
                f"total_steps={total_steps}; set max_epochs or max_steps"
            )
        if step >= total_steps:
            return self.beta
        period = total_steps / self.cycles
        tau = math.fmod(step, period) / period
        return self.beta * min(1.0, tau / self.ratio)


Schedule = Constant | LinearWarmup | Cyclical

# Config name -> class; each class's fields are its config keys.
SCHEDULES: dict[str, type[Schedule]] = {
    "constant": Constant,
    "linear": LinearWarmup,
    "cyclical": Cyclical,
}
