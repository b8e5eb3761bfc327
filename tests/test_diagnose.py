"""Each diagnosis on synthetic curves made to show it, and the healthy case."""

import math

import pytest

from studies import diagnose

EPOCHS = range(1, 21)
FALLING = [1.0 / e**0.5 for e in EPOCHS]  # 1.0 -> 0.22


@pytest.mark.parametrize(
    "train, val, kind",
    [
        # train keeps falling while val turns up after epoch 8
        (FALLING, [0.9 / e**0.5 if e <= 8 else 0.32 + 0.02 * (e - 8) for e in EPOCHS], "overfitting"),
        # both high and flat: a model too small (or an lr too low) barely learns
        ([2.30 - 0.005 * e for e in EPOCHS], [2.31 - 0.004 * e for e in EPOCHS], "underfitting"),
        # learning, then a spike: an lr too high
        (FALLING[:10] + [2.5] + FALLING[11:], FALLING, "unstable"),
        # erratic: up and down every other epoch
        ([1.0 - 0.02 * e + (0.2 if e % 2 else 0.0) for e in EPOCHS], FALLING, "unstable"),
        # diverged
        (FALLING[:5] + [math.nan], FALLING[:6], "unstable"),
        # both fall and val flattens near its best
        (FALLING, [0.1 + 0.8 / e for e in EPOCHS], "healthy"),
    ],
)
def test_each_diagnosis_on_curves_made_to_show_it(train, val, kind):
    found = diagnose(train, val)
    assert found.kind == kind, found.line()
    assert found.next_step and found.evidence in found.line()


def test_the_next_steps_follow_the_notes():
    assert "regularise" in diagnose(FALLING, [0.5, 0.4, 0.35] + [0.35 + 0.02 * e for e in range(17)]).next_step
    assert "capacity" in diagnose([1.0] * 10, [1.0] * 10).next_step
    assert "lower the learning rate" in diagnose([1.0, 0.5, 0.4, 3.0], [1.0, 0.5, 0.4, 0.4]).next_step
