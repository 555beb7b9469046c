"""Config values as compare's table and figures show them."""

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from vaelab.report.charts import SIGNIFICANT_DIGITS
from vaelab.report.rows import Row

TARGET = "._target_"  # a model part's class, e.g. prior._target_


def _value(value: Any, digits: int | None = None) -> str:
    """A config value as text; a float rounded to `digits` significant digits if given."""
    if isinstance(value, float) and digits is not None and math.isfinite(value):
        value = float(f"{value:.{digits}g}")  # then printed as Python does: 1.0, 0.0001164
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return "null" if value is None else str(value)


def _digits(values: Iterable[Any]) -> int:
    """The significant digits to show these config values with: SIGNIFICANT_DIGITS,
    or more where fewer would show two different floats the same."""
    floats = {v for v in values if isinstance(v, float) and math.isfinite(v)}
    return next(
        d
        for d in range(SIGNIFICANT_DIGITS, 18)  # 17 digits tell any two floats apart
        if len({f"{v:.{d}g}" for v in floats}) == len(floats)
    )


def _column_digits(rows: Sequence[Row], keys: Sequence[str]) -> dict[str, int]:
    return {k: _digits(r.config[k] for r in rows) for k in keys}


def _label(config: dict[str, Any], keys: Sequence[str], digits: dict[str, int]) -> str:
    """`key=value, ...` of the keys a run has (null ones left out), a model part as
    `prior=VampPrior`."""
    items = []
    for k in keys:
        if config[k] is None:
            continue
        value = _value(config[k], digits.get(k))
        if k.endswith(TARGET):
            k, value = k.removesuffix(TARGET), value.rsplit(".", 1)[-1]
        items.append(f"{k}={value}")
    return ", ".join(items)
