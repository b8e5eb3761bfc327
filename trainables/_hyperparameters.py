"""Reading the model families' hyperparameters out of a config: each error is one line naming the field and what
would be valid. Its own module so that the families (`_families`) and the transfer family (`_transfer`) share it
without importing each other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def integer(config: dict, key: str, low: int = 1) -> int:
    value = config[key]
    if isinstance(value, float) and value.is_integer():  # JSON and some samplers hand back 64.0
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{key} must be an integer >= {low}, not {value!r}")
    return value


def fraction(config: dict, key: str) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"{key} must be a number in [0, 1), not {value!r}")
    return float(value)


def one_of(key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{key} must be {', '.join(choices[:-1])} or {choices[-1]}, not {value!r}")
    return value


def flag(config: dict, key: str) -> bool:
    value = config[key]
    if isinstance(value, bool):  # not truthiness: the string "false" would be true
        return value
    raise ValueError(f"{key} must be true or false, not {value!r}")
