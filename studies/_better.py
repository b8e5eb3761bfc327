"""Which metric value is better, for a study's `mode` ("max" or "min"): defined here once.

Plain Python with no imports of ours, so the training loop (in a worker), the engine and the queries all
share it without importing torch, ray or mlflow for it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def better(value: float, than: float | None, mode: str) -> bool:
    """Whether `value` is strictly better than `than` (None: nothing yet, so any value is)."""
    if than is None:
        return True
    return value > than if mode == "max" else value < than


def best_of(values: Iterable[float], mode: str) -> float | None:
    """The best finite value among `values`; None if there is none (no values, or all NaN or infinite)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if mode == "max" else min(finite)


def rank_key(value: float | None, mode: str) -> tuple[bool, float]:
    """Sorting by this puts the best value first and a missing (None or NaN) one last."""
    missing = value is None or math.isnan(value)
    return missing, 0.0 if missing else (-value if mode == "max" else value)
