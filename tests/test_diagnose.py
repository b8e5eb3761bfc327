"""Each diagnosis on synthetic curves made to show it, and the healthy case."""

import math

import pytest

from studies import diagnose, readable

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


# The default study's top trials: a train loss that fell from 2.3 to near zero and then wiggled there.
NEAR_ZERO = [2.3, 0.9, 0.4, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.003, 0.006, 0.004, 0.003, 0.005, 0.003, 0.004]
VAL_NEAR_ZERO = [0.8, 0.3, 0.15, 0.08, 0.05, 0.04, 0.035, 0.03, 0.031, 0.029, 0.03, 0.03, 0.029, 0.03, 0.03, 0.029]


def test_a_wiggle_on_a_loss_near_zero_is_not_a_spike():
    found = diagnose(NEAR_ZERO, VAL_NEAR_ZERO)
    assert found.kind == "healthy", found.line()
    # Its val loss too may wiggle near its floor: noise of the same size as its own steps up.
    assert diagnose(NEAR_ZERO, [0.03 + (0.004 if e % 3 == 0 else 0.0) for e in range(16)]).kind != "unstable"


@pytest.mark.parametrize(
    "train, why",
    [
        # the loss more than doubles, 0.5 -> 1.2, mid-training, then recovers
        ([2.0, 1.2, 0.8, 0.6, 0.5, 1.2, 0.45, 0.4, 0.38, 0.36], "a spike at epoch 6: 1.2 after a best of 0.5"),
        # near zero, a jump that dwarfs both the curve's noise and the ground it covered since its start
        (NEAR_ZERO[:10] + [1.5] + NEAR_ZERO[11:], "a spike at epoch 11: 1.5 after a best of 0.003"),
        # a non-finite loss always is
        ([0.5, 0.4, math.inf, 0.3], "diverged"),
    ],
)
def test_a_real_spike_still_is_unstable(train, why):
    found = diagnose(train, train)
    assert found.kind == "unstable" and why in found.evidence, found.line()


def test_the_evidence_is_rounded_to_four_significant_digits():
    found = diagnose([2.3456789, 1.23456789, 0.98765432, 0.87654321], [2.1, 1.1, 0.9, 0.8])
    assert found.evidence == "train 2.346 -> 0.8765, val 2.1 -> 0.8", found.line()


@pytest.mark.parametrize(
    "value, written",
    [
        (0.9895833333333334, "0.9896"),  # the default study's best, as the report once printed it
        (0.003123456, "0.003123"),
        (1234.567, "1235"),
        (12345.678, "12346"),  # no exponent for a large number
        (2.0, "2"),
        (7, "7"),
        (None, "-"),
        (math.nan, "nan"),
    ],
)
def test_every_figure_is_written_by_one_rule(value, written):
    assert readable(value) == written
