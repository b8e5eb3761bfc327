"""The words a sweep shares: how a trial ended, which value is better, and the keys a trainable's reports carry.

Defined here once and imported by every package (`trainables` in the workers, `search` in the driver,
`studies` in the queries). Plain Python with no imports of ours, so reading a word never loads torch, Ray
or MLflow. The names MLflow records (tags) are `tracking.tags`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# How a trial ended (or that it still runs): the `state` of a trial in MLflow, `results` and the summary.
RUNNING, COMPLETED, PRUNED, STOPPED, FAILED = "running", "completed", "pruned", "stopped", "failed"
STATES = (RUNNING, COMPLETED, PRUNED, STOPPED, FAILED)  # in the order a summary lists them
# The states of a trial that ended with a usable value: what ranking, warm starts and promotion read.
FINISHED = (COMPLETED, PRUNED, STOPPED)

# Why a trial ended by its own decision. A trial that reports fewer epochs than the study's max_t
# without one of these was stopped by the scheduler (pruned).
STOP_EARLY = "early_stopping"  # patience ran out: counts as a finished (completed) trial
STOP_DIVERGED = "diverged"  # NaN/inf loss: counts as failed, never as a good value

# Keys the reporter adds to every report; trainables must not use them for their own metrics.
EPOCH = "epoch"
STOP_KEY = "stop_reason"
# Added by the engine's reporter: seconds of the trial's own training so far, ASHA's time axis under
# `asha: {budget: seconds}`.
TRAIN_SECONDS = "train_seconds"
NODE_KEY = "hpsearch_node"  # added by the engine's reporter: the Ray node the trial runs on


def better(value: float, than: float | None, mode: str) -> bool:
    """Whether `value` is strictly better than `than` (None: nothing yet, so any value is), for a study's
    `mode` ("max" or "min")."""
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
