"""`hpsearch check`: passes on a good study; fails on a broken data set and on a model that cannot overfit
one batch; warns (without failing) when the study's lr range misses the LR range test's."""

from tests.conftest import write_study

STUDY = """\
name: {name}
trainable: {trainable}
space:
{space}
fixed: {fixed}
trials: 4
"""


def study(tmp_path, name, trainable="digits-mlp", space="  hidden: {type: int, low: 16, high: 64}", fixed="{}"):
    return write_study(
        tmp_path / f"{name}.yaml", STUDY.format(name=name, trainable=trainable, space=space, fixed=fixed)
    )


def test_check_passes_on_a_good_study(cli, tmp_path):
    code, out, err = cli("check", "digits-mlp")
    assert code == 0, out + err
    for part in (
        "[  ok] data",
        "[  ok] shapes",
        "[  ok] overfit one batch",
        "[  ok] lr range",
        "[  ok] estimate",
        "head: 10 outputs for 10 classes",
        "suggested lr range",
        "preflight passed",
    ):
        assert part in out, out
    assert "(Linear): (8, 10)" in out  # the shape after each layer
    assert "trials: about" in out and "with ASHA" in out


def test_check_fails_on_a_broken_data_set(cli, tmp_path):
    code, out, _ = cli("check", study(tmp_path, "broken", trainable="tests.broken:trainable", space="  {}"))
    assert code == 1 and "[FAIL] data" in out and "preflight failed" in out
    assert "1 samples with NaN or inf values" in out  # the corrupt image
    assert "the model's head has 10 outputs but the data has 12 classes" in out
    assert "not run: fix the data first" in out


def test_check_fails_when_the_model_cannot_overfit_one_batch(cli, tmp_path):
    code, out, _ = cli("check", study(tmp_path, "frozen", fixed="{lr: 0.0}"))
    assert code == 1 and "[FAIL] overfit one batch" in out and "cannot memorise one batch" in out
    assert "learning rate too low (or 0)" in out


def test_check_warns_when_the_lr_range_misses_the_lr_test(cli, tmp_path):
    space = "  lr: {type: float, low: 1.0e-7, high: 1.0e-6, log: true}"
    _, out, _ = cli("check", study(tmp_path, "slow", space=space, fixed="{}"))
    # A warning, not a failure (the one-batch check, at the range's middle lr of 3e-7, may fail on its own).
    assert "[warn] lr range" in out and "barely overlaps" in out, out
    assert "the study searches lr 1e-07 .. 1e-06" in out
