"""Beta schedules: values worked out by hand, and the shape of the cyclical schedule."""

import itertools
import math

import pytest

from vaelab.errors import ConfigError
from vaelab.models.schedules import SCHEDULES, Constant, Cyclical, LinearWarmup


def test_constant():
    assert [Constant(2.5).weight(step, 100) for step in (0, 7, 10_000)] == [2.5] * 3


def test_linear_warmup_reaches_beta_after_warmup_steps():
    schedule = LinearWarmup(beta=2.0, warmup_steps=4)
    assert [schedule.weight(step) for step in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    # Fractional, as warm-up epochs times batches per epoch give: 2.5 steps.
    assert [LinearWarmup(1.0, 2.5).weight(step) for step in range(3)] == [0.4, 0.8, 1.0]
    assert LinearWarmup(3.0, 0).weight(0) == 3.0


def test_cyclical_by_hand():
    # Two periods of 4 steps; beta rises over the first half of each.
    schedule = Cyclical(beta=2.0, cycles=2, ratio=0.5)
    weights = [schedule.weight(step, 8) for step in range(10)]
    assert weights == [0.0, 1.0, 2.0, 2.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    # Periods of 2.5 steps, rising over 1.25 steps: tau = 0, 0.4, 0.8, 0.2, 0.6 of a period.
    weights = [Cyclical(1.0, cycles=4, ratio=0.5).weight(step, 10) for step in range(5)]
    assert weights == pytest.approx([0.0, 0.8, 1.0, 0.4, 1.0])


def test_cyclical_shape():
    total, cycles, ratio, beta = 1000, 4, 0.25, 3.0
    schedule = Cyclical(beta, cycles, ratio)
    weights = [schedule.weight(step, total) for step in range(total)]
    starts = [step for step in range(1, total) if weights[step] < weights[step - 1]]
    assert starts == [250, 500, 750]  # M cycles: a restart at each period's first step
    for start in (0, *starts):
        cycle = weights[start : start + 250]
        assert cycle[0] == 0
        assert all(a <= b for a, b in itertools.pairwise(cycle))  # rises, then flat
        ramp = [w for w in cycle if w < beta]
        assert len(ramp) == math.ceil(ratio * 250)  # the first R of each cycle (62.5 steps)
        steps = [b - a for a, b in itertools.pairwise(ramp)]
        assert steps == pytest.approx([beta / (ratio * 250)] * len(steps))  # linearly


def test_schedules_by_config_name():
    assert SCHEDULES["constant"](beta=2.0).weight(5, 10) == 2.0
    assert SCHEDULES["linear"](beta=1.0, warmup_steps=10).weight(4, 100) == 0.5
    assert SCHEDULES["cyclical"](beta=1.0, cycles=1, ratio=1.0).weight(5, 10) == 0.5


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Constant(-1.0), "beta must be a number >= 0"),
        (lambda: LinearWarmup(1.0, -3), "warmup_steps must be >= 0"),
        (lambda: Cyclical(1.0, cycles=0), "beta_schedule.cycles must be a positive integer"),
        (lambda: Cyclical(1.0, cycles=2.5), "beta_schedule.cycles must be a positive integer"),
        (lambda: Cyclical(1.0, ratio=0.0), r"beta_schedule.ratio must be a number in \(0, 1\]"),
        (lambda: Cyclical(1.0, ratio=1.5), r"beta_schedule.ratio must be a number in \(0, 1\]"),
        (lambda: Cyclical(1.0).weight(0, 0), "needs the number of training steps"),
    ],
)
def test_bad_settings_are_refused(build, message):
    with pytest.raises(ConfigError, match=message):
        build()
