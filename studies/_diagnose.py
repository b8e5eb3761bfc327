"""Reading a trial's loss curves as a practitioner does: overfitting, underfitting, unstable, healthy,
each with its usual next step. Pure functions over per-epoch train and validation losses."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from ._figures import readable

OVERFITTING, UNDERFITTING, UNSTABLE, HEALTHY = "overfitting", "underfitting", "unstable", "healthy"

NEXT_STEP = {
    OVERFITTING: "regularise: dropout, weight decay, data augmentation or early stopping; if that is not enough, "
    "a smaller model",
    UNDERFITTING: "add capacity (more layers before more width), train longer, or raise the learning rate",
    UNSTABLE: "lower the learning rate; add gradient clipping or a warmup; a larger batch smooths the steps",
    HEALTHY: "train longer at these settings, or narrow the search around them",
}

# Thresholds, relative to the curve's own scale. A spike must stand out on three counts at once: against the
# loss's level, against the ground the curve has covered, and against its own epoch-to-epoch noise. Judged on
# the level alone, a loss near zero "spiked" whenever it wiggled (0.003 -> 0.006 is a doubling).
SPIKE = 1.5  # the loss reaches this many times its best so far (after the first epochs) ...
SPIKE_SHARE = 0.25  # ... rising by at least this share of the range the curve has spanned so far ...
SPIKE_NOISE = 3.0  # ... and by this many times its typical rise from one epoch to the next
JUMP = 0.2  # the spike's epoch is this share above the epoch before: a slow creep up is not a spike
FLOOR = 1e-3  # loss units: a smaller rise is never a spike or an erratic step (a loss converged to ~0)
ERRATIC = 0.4  # this share of epoch-to-epoch steps going up is erratic training ...
ERRATIC_STEP = 0.05  # ... counting a step up only if it is 5% of the loss's level and of the curve's range
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
    """The reading of one trial's curves (per-epoch train and validation loss, same length)."""
    train, val = [float(v) for v in train], [float(v) for v in val]
    if not train or not val:
        return Diagnosis(UNSTABLE, "no complete epoch was recorded")
    if not all(math.isfinite(v) for v in train + val):
        return Diagnosis(UNSTABLE, "the loss became NaN or infinite (diverged)")
    spike = _spike(train) or _spike(val)
    if spike:
        return Diagnosis(UNSTABLE, spike)
    if len(train) >= 4:
        step = max(ERRATIC_STEP * (max(train) - min(train)), FLOOR)
        ups = sum(b > a * (1 + ERRATIC_STEP) and b - a > step for a, b in zip(train, train[1:]))
        if ups / (len(train) - 1) >= ERRATIC:
            return Diagnosis(UNSTABLE, f"train loss went up in {ups} of {len(train) - 1} epochs")
    if train[-1] > LEARNED * train[0]:
        return Diagnosis(
            UNDERFITTING,
            f"train loss only fell from {readable(train[0])} to {readable(train[-1])}; val ends at {readable(val[-1])}",
        )
    best = min(range(len(val)), key=val.__getitem__)
    if len(val) >= 3 and best < len(val) - 1 and val[-1] > val[best] * (1 + RISE) and train[-1] < train[best]:
        return Diagnosis(
            OVERFITTING,
            f"val loss rose from {readable(val[best])} (epoch {best + 1}) to {readable(val[-1])} while train loss fell "
            f"from {readable(train[best])} to {readable(train[-1])}",
        )
    return Diagnosis(
        HEALTHY, f"train {readable(train[0])} -> {readable(train[-1])}, val {readable(val[0])} -> {readable(val[-1])}"
    )


def _spike(curve: list[float]) -> str | None:
    """The first epoch (after the first two) where the loss jumps far above its best so far, on every count
    above: its level, the range the curve has spanned, its own noise, and FLOOR."""
    for i in range(2, len(curve)):
        before = curve[:i]
        low, rise = min(before), curve[i] - min(before)
        if (low > 0 and curve[i] <= SPIKE * low) or curve[i] <= curve[i - 1] + JUMP * abs(curve[i - 1]):
            continue  # not far above its best, or not a jump from the epoch before
        if rise > max(SPIKE_SHARE * (max(before) - low), SPIKE_NOISE * _typical_rise(before), FLOOR):
            return f"a spike at epoch {i + 1}: {readable(curve[i])} after a best of {readable(low)}"
    return None


def _typical_rise(curve: list[float]) -> float:
    """The median step up between consecutive epochs: the curve's own noise (0 for a curve that only fell)."""
    ups = sorted(b - a for a, b in zip(curve, curve[1:]) if b > a)
    return ups[len(ups) // 2] if ups else 0.0
