"""How a number a person reads is written: one rule for the report, its diagnoses and its finalists."""

from __future__ import annotations

import math

DIGITS = 4  # significant digits: tells 0.9896 from 0.9901, and never prints float noise (0.9895833333333334)


def readable(value) -> str:
    """`value` rounded to DIGITS significant digits (integers as they are; None as `-`)."""
    if value is None:
        return "-"
    if isinstance(value, (bool, int)):
        return str(value)
    value = float(value)
    if not math.isfinite(value):
        return str(value)  # nan, inf: the fact itself is the news
    return f"{value:.{DIGITS}g}"
