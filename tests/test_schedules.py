"""Beta schedules: values worked out by hand, the shape of the cyclical schedule, each option
file built by its `_target_`, and the old `kind:` form of earlier runs."""

import itertools
import math

import pytest
from omegaconf import OmegaConf

from vaelab.config import config_dir
from vaelab.errors import ConfigError
from vaelab.models.schedules import (
    BetaSchedule,
    Constant,
    Cyclical,
    LinearWarmup,
    build_schedule,
    schedule_node,
)


def test_constant():
    assert [Constant(2.5).weight(step, 100) for step in (0, 7, 10_000)] == [2.5] * 3


def test_linear_warmup_reaches_beta_after_warmup_epochs():
    schedule = LinearWarmup(beta=2.0, warmup_epochs=2)
    weights = [schedule.weight(step, steps_per_epoch=2) for step in range(6)]
    assert weights == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    # Fractional, as warm-up epochs times batches per epoch give: 2.5 steps.
    assert [LinearWarmup(1.0, 2.5).weight(step) for step in range(3)] == [0.4, 0.8, 1.0]
    assert LinearWarmup(3.0, 0).weight(0, steps_per_epoch=math.inf) == 3.0


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


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("constant", Constant()),
        ("linear", LinearWarmup(warmup_epochs=3)),
        ("cyclical", Cyclical(cycles=4, ratio=0.5)),
    ],
)
def test_each_option_file_builds_its_class(option, expected):
    node = OmegaConf.load(config_dir() / "beta_schedule" / f"{option}.yaml")
    schedule = build_schedule(OmegaConf.to_container(node), kl_warmup_epochs=3)
    assert isinstance(schedule, BetaSchedule) and schedule == expected


@pytest.mark.parametrize(
    ("old", "expected"),
    [
        ({"kind": "constant"}, Constant()),
        ({"kind": "linear"}, LinearWarmup(warmup_epochs=2)),
        ({"kind": "cyclical", "cycles": 3, "ratio": 0.25}, Cyclical(cycles=3, ratio=0.25)),
        (None, LinearWarmup(warmup_epochs=2)),  # a run from before the schedules
    ],
)
def test_the_old_kind_form_of_earlier_runs_builds_the_same_schedule(old, expected):
    assert build_schedule(old, kl_warmup_epochs=2) == expected
    assert "kind" not in schedule_node(old)


def test_a_schedule_node_naming_another_class_is_refused():
    with pytest.raises(ConfigError, match=r"not a subclass of vaelab\.models\.schedules\.Beta"):
        build_schedule({"_target_": "collections.OrderedDict"})
    with pytest.raises(ConfigError, match=r"beta_schedule\.kind=cosine is not a schedule"):
        build_schedule({"kind": "cosine"})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Constant(-1.0), "beta must be a number >= 0"),
        (lambda: LinearWarmup(1.0, -3), "warmup_epochs must be >= 0"),
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
