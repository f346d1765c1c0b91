"""The value checks the typed config's sections run when built (se_jax/config/schema.py).

Each raises ConfigError naming the field, its value and the rule, e.g.

    config.sampling.num_samples=0: must be >= 2 (semantic entropy compares M >= 2 answers)

so a bad value fails in seconds at the launcher's edge, not after a model load or, worse,
as a silently wrong result.
"""
from __future__ import annotations

import math
from typing import Any, NoReturn, Sequence


# The correctness judges (se_jax/abstention/judges.py builds one per name).
JUDGE_NAMES = ("alias", "f1", "llm")


class ConfigError(ValueError):
    """A config value is out of range or of the wrong kind; the message names the field."""


def fail(field: str, value: Any, rule: str) -> NoReturn:
    """Raise the one-line ConfigError for `config.<field>=<value>`."""
    raise ConfigError(f"config.{field}={value!r}: {rule}")


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(field, value, "must be a number")
    return float(value)


def check_int(field: str, value: Any, *, minimum: int, why: str = "") -> None:
    """An integer >= minimum (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        fail(field, value, "must be an integer")
    if value < minimum:
        fail(field, value, f"must be >= {minimum}" + (f" ({why})" if why else ""))


def check_float(field: str, value: Any, *, minimum: float | None = None,
                maximum: float | None = None, positive: bool = False, why: str = "") -> None:
    """A finite number within [minimum, maximum] (and > 0 when `positive`)."""
    x = _number(field, value)
    suffix = f" ({why})" if why else ""
    if not math.isfinite(x):
        fail(field, value, "must be a finite number" + suffix)
    if positive and x <= 0:
        fail(field, value, "must be > 0" + suffix)
    if minimum is not None and x < minimum:
        fail(field, value, f"must be >= {minimum}" + suffix)
    if maximum is not None and x > maximum:
        fail(field, value, f"must be <= {maximum}" + suffix)


def check_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        fail(field, value, f"must be one of {list(choices)}")


def check_sizes(field: str, values: Any, *, minimum: int = 1) -> None:
    """A non-empty sequence of integers >= minimum (e.g. padding buckets)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        fail(field, values, "must be a non-empty list of integers")
    for i, v in enumerate(values):
        check_int(f"{field}[{i}]", v, minimum=minimum)
