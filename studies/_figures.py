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
    if abs(value) >= 10**DIGITS:
        return f"{value:.0f}"  # a large number keeps its integer digits (12346 s, not 1.235e+04 s)
    return f"{value:.{DIGITS}g}"
