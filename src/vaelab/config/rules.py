"""The rule language of the config: what a value may be (`Rule`), in words for the error
message, and `knob`, the schema field that holds its rule (`vaelab.config.schemas`)."""

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING


@dataclass(frozen=True)
class Rule:
    """A check of one value, and what it allows in words (for the error message)."""

    allowed: str
    ok: Callable[[Any], bool]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def integer(minimum: int, maximum: int | None = None) -> Rule:
    allowed = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if maximum is not None:
        allowed = f"an integer in [{minimum}, {maximum}]"
    return Rule(
        allowed,
        lambda v: is_int(v) and v >= minimum and (maximum is None or v <= maximum),
    )


def number(minimum: float, above: bool = False, below: float | None = None) -> Rule:
    """A finite number >= minimum (> minimum if `above`), and < below if given."""
    low = (lambda v: v > minimum) if above else (lambda v: v >= minimum)
    if below is not None:
        return Rule(
            f"a number in {'(' if above else '['}{minimum}, {below})",
            lambda v: is_number(v) and low(v) and v < below,
        )
    return Rule(f"a number {'>' if above else '>='} {minimum}", lambda v: is_number(v) and low(v))


BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))


def one_of(choices: tuple[str, ...]) -> Rule:
    return Rule(f"one of {', '.join(choices)}", lambda v: v in choices)


def noted(rule: Rule, note: str) -> Rule:
    return Rule(f"{rule.allowed} ({note})", rule.ok)


def or_null(rule: Rule) -> Rule:
    return Rule(f"{rule.allowed}, or null", lambda v: v is None or rule.ok(v))


SEED = integer(0, 2**32 - 1)  # what numpy, and so Lightning's seed_everything, accepts
# The top-level num_samples, and objective=elbo's, which the YAML sets from it.
NUM_SAMPLES = noted(integer(1), "z samples per image in the ELBO")


def knob(rule: Rule | None = None, default: Any = MISSING, nodes: dict | None = None) -> Any:
    """A schema field whose value `rule` checks: its type is the field's annotation, its
    value (or the default) comes from the YAML files. `nodes`, for a `dict` field: name ->
    an untyped dataclass holding the rules of that sub-node's keys ("args": of the node's
    own keys), for the model parts' arguments and the callbacks', which differ by option."""
    metadata = {"rule": rule} if rule else {}
    return dataclasses.field(default=default, metadata={**metadata, "nodes": nodes or {}})
