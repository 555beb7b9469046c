"""Schedules of the KL weight beta over training: `weight(step, total_steps, steps_per_epoch)`.

`step` counts optimizer steps from 0 (Lightning's `global_step`); `total_steps` is the
length of training in steps (`trainer.estimated_stepping_batches`), asked for only by a
schedule that `needs_total_steps`; `steps_per_epoch` turns epochs into steps. Each option
file of conf/beta_schedule names its class here by `_target_`; `LitVAE` builds it with
`build_schedule` and multiplies the top-level beta by its weight (built with beta = 1).
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vaelab.config.schemas import check_fields
from vaelab.errors import ConfigError
from vaelab.targets import named_class


def _check(schedule: object) -> None:
    """The fields that are knobs (beta, and beta_schedule's), by their rules in the schema."""
    check_fields(vars(schedule), "beta_schedule.", "")


class BetaSchedule:
    """The base class of the schedules: the class a `beta_schedule._target_` must subclass.

    Capabilities, read by the composition check and `LitVAE`:
    `needs_total_steps`: `weight` reads `total_steps` (so training must have a length);
    `uses_kl_warmup`: it takes the top-level `kl_warmup_epochs` as `warmup_epochs`, which
    `weight` turns into steps with `steps_per_epoch`.
    """

    needs_total_steps: bool = False
    uses_kl_warmup: bool = False
    warmup_epochs: float = 0.0  # read with steps_per_epoch; 0: `weight` ignores it

    def weight(self, step: int, total_steps: int = 0, steps_per_epoch: float = 1.0) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(BetaSchedule):
    """beta at every step."""

    beta: float = 1.0

    def __post_init__(self):
        _check(self)

    def weight(self, step: int, total_steps: int = 0, steps_per_epoch: float = 1.0) -> float:
        return self.beta


@dataclass(frozen=True)
class LinearWarmup(BetaSchedule):
    """beta * min(1, (step + 1) / (warmup_epochs * steps_per_epoch)): reaches beta after
    `warmup_epochs` epochs (`kl_warmup_epochs`; may be fractional); 0 is no warm-up. The
    first step already has weight beta / warmup steps, as in `LitVAE.kl_weight`."""

    uses_kl_warmup = True

    beta: float = 1.0
    warmup_epochs: float = 0.0

    def __post_init__(self):
        _check(self)
        if not self.warmup_epochs >= 0:
            raise ConfigError(
                f"warmup_epochs must be >= 0, got {self.warmup_epochs}; 0 turns the warm-up off"
            )

    def weight(self, step: int, total_steps: int = 0, steps_per_epoch: float = 1.0) -> float:
        if self.warmup_epochs == 0:  # before steps_per_epoch: it may be inf
            return self.beta
        return self.beta * min(1.0, (step + 1) / (self.warmup_epochs * steps_per_epoch))


@dataclass(frozen=True)
class Cyclical(BetaSchedule):
    """Cyclical annealing (Fu et al. 2019): training is cut into `cycles` equal periods; in
    each, the weight rises linearly from 0 over the first `ratio` of the period, then stays at
    beta. Past `total_steps` (e.g. training extended on resume) it stays at beta.

    With tau = (step mod P) / P for the period P = total_steps / cycles, the weight is
    beta * min(1, tau / ratio): 0 at the first step of each period, as in the paper's code.
    """

    needs_total_steps = True

    beta: float = 1.0
    cycles: int = 4
    ratio: float = 0.5

    def __post_init__(self):
        _check(self)

    def weight(self, step: int, total_steps: int = 0, steps_per_epoch: float = 1.0) -> float:
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


# Runs made before the option files named their class wrote `kind: <option>` instead of a
# `_target_` (in config.yaml and the checkpoint's hyperparameters); read only here.
_OLD_KINDS = {"constant": Constant, "linear": LinearWarmup, "cyclical": Cyclical}


def schedule_node(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """A `beta_schedule` node with its `_target_`: an old node's `kind` translated, and no
    node (a run from before the schedules) the linear warm-up."""
    node = dict(cfg or {})
    if "_target_" in node:
        return node
    kind = node.pop("kind", "linear")
    if kind not in _OLD_KINDS:
        raise ConfigError(
            f"beta_schedule.kind={kind} is not a schedule: give beta_schedule._target_, "
            f"e.g. {LinearWarmup.__module__}.LinearWarmup"
        )
    cls = _OLD_KINDS[kind]
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **node}


def schedule_class(cfg: Mapping[str, Any] | None) -> type[BetaSchedule]:
    """The class a `beta_schedule` node names (old forms translated), refused unless it is a
    `BetaSchedule` (`vaelab.targets.named_class`); imports no torch."""
    return named_class(schedule_node(cfg)["_target_"], BetaSchedule, "beta_schedule")


def build_schedule(cfg: Mapping[str, Any] | None, kl_warmup_epochs: float = 0.0) -> BetaSchedule:
    """The schedule of a `beta_schedule` node with beta = 1 (a fraction of beta); one that
    `uses_kl_warmup` gets `kl_warmup_epochs` as its `warmup_epochs`."""
    cls = schedule_class(cfg)
    args = {k: v for k, v in schedule_node(cfg).items() if k != "_target_"}
    if cls.uses_kl_warmup:
        args["warmup_epochs"] = kl_warmup_epochs
    return cls(**args)
