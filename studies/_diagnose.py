"""Reading a trial's loss curves the way the course notes do: overfitting, underfitting, unstable, healthy,
each with the notes' suggested next step. Pure functions over per-epoch train and validation losses."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

OVERFITTING, UNDERFITTING, UNSTABLE, HEALTHY = "overfitting", "underfitting", "unstable", "healthy"

NEXT_STEP = {
    OVERFITTING: "regularise: dropout, weight decay, data augmentation or early stopping; if that is not enough, "
    "a smaller model",
    UNDERFITTING: "add capacity (more layers before more width), train longer, or raise the learning rate",
    UNSTABLE: "lower the learning rate; add gradient clipping or a warmup; a larger batch smooths the steps",
    HEALTHY: "train longer at these settings, or narrow the search around them",
}

# Thresholds, relative to the curve's own scale.
SPIKE = 1.5  # a loss this many times the best so far (after the first epochs) is a spike
ERRATIC = 0.4  # this share of epoch-to-epoch steps going up (by more than 5%) is erratic training
LEARNED = 0.7  # a final train loss above this share of the first is "high or flat": little was learned
RISE = 0.10  # val ending this much above its minimum, while train still falls, is overfitting


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    kind: str
    evidence: str  # what in the curves shows it, in numbers

    @property
    def next_step(self) -> str:
        return NEXT_STEP[self.kind]

    def line(self) -> str:
        return f"{self.kind}: {self.evidence}; next: {self.next_step}"


def diagnose(train: Sequence[float], val: Sequence[float]) -> Diagnosis:
    """The notes' reading of one trial's curves (per-epoch train and validation loss, same length)."""
    train, val = [float(v) for v in train], [float(v) for v in val]
    if not train or not val:
        return Diagnosis(UNSTABLE, "no complete epoch was recorded")
    if not all(math.isfinite(v) for v in train + val):
        return Diagnosis(UNSTABLE, "the loss became NaN or infinite (diverged)")
    spike = _spike(train) or _spike(val)
    if spike:
        return Diagnosis(UNSTABLE, spike)
    if len(train) >= 4:
        ups = sum(b > a * 1.05 for a, b in zip(train, train[1:]))
        if ups / (len(train) - 1) >= ERRATIC:
            return Diagnosis(UNSTABLE, f"train loss went up in {ups} of {len(train) - 1} epochs")
    if train[-1] > LEARNED * train[0]:
        return Diagnosis(
            UNDERFITTING, f"train loss only fell from {train[0]:.3g} to {train[-1]:.3g}; val ends at {val[-1]:.3g}"
        )
    best = min(range(len(val)), key=val.__getitem__)
    if len(val) >= 3 and best < len(val) - 1 and val[-1] > val[best] * (1 + RISE) and train[-1] < train[best]:
        return Diagnosis(
            OVERFITTING,
            f"val loss rose from {val[best]:.3g} (epoch {best + 1}) to {val[-1]:.3g} while train loss fell "
            f"from {train[best]:.3g} to {train[-1]:.3g}",
        )
    return Diagnosis(HEALTHY, f"train {train[0]:.3g} -> {train[-1]:.3g}, val {val[0]:.3g} -> {val[-1]:.3g}")


def _spike(curve: list[float]) -> str | None:
    for i in range(2, len(curve)):
        low = min(curve[:i])
        if low > 0 and curve[i] > SPIKE * low and curve[i] > curve[i - 1] * 1.2:
            return f"a spike at epoch {i + 1}: {curve[i]:.3g} after a best of {low:.3g}"
    return None
