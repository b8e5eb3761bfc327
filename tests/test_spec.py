"""Every bad-input case of a study, through the CLI: exit 2, one line naming file and field, nothing written."""

import pydantic
import pytest

from tests.conftest import run_cli, write_study

GOOD = """\
name: tiny
trainable: digits-mlp
space:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
trials: 2
"""

CASES = {
    "yaml_syntax": ("name: tiny\ntrainable: [digits-mlp\n", "YAML syntax error"),
    "unknown_field": (GOOD + "bogus: 1\n", "bogus: unknown field"),
    "wrong_type": (GOOD.replace("trials: 2", "trials: many"), "trials: Input should be a valid integer"),
    "low_gt_high": (
        GOOD.replace("low: 1.0e-3, high: 1.0e-2", "low: 1.0e-1, high: 1.0e-2"),
        "space.lr: low (0.1) must be <= high (0.01)",
    ),
    "log_low_zero": (GOOD.replace("low: 1.0e-3", "low: 0.0"), "space.lr: log: true needs low > 0"),
    "empty_categorical": (
        GOOD.replace("trials: 2", "trials: 2\n").replace(
            "log: true}\n", "log: true}\n  optimizer: {type: categorical, choices: []}\n"
        ),
        "space.optimizer.choices: List should have at least 1 item",
    ),
    "unknown_trainable": (
        GOOD.replace("trainable: digits-mlp", "trainable: nope"),
        "trainable: unknown trainable 'nope'; known: cifar10-cnn, cifar10-resnet, digits-autoencoder, digits-cnn",
    ),
    "unknown_sampler": (
        GOOD + "sampler: bogus\n",
        "sampler: Input should be 'tpe', 'random', 'grid', 'gp', 'cmaes' or 'qmc'",
    ),
    "grid_without_points": (GOOD + "sampler: grid\n", "sampler grid: space.lr needs values or grid_points"),
    "condition_on_later_param": (
        GOOD.replace(
            "log: true}\n",
            "log: true, when: {optimizer: sgd}}\n  optimizer: {type: categorical, choices: [adam, sgd]}\n",
        ),
        "space.lr.when: 'optimizer' must be a parameter listed before 'lr'",
    ),
    "condition_on_unknown_choice": (
        GOOD.replace("  lr:", "  optimizer: {type: categorical, choices: [adam, sgd]}\n  lr:").replace(
            "log: true}", "log: true, when: {optimizer: rmsprop}}"
        ),
        "space.lr.when: ['rmsprop'] not among optimizer's choices",
    ),
    "grid_value_outside_range": (
        GOOD.replace("log: true}", "log: true, values: [0.5]}"),
        "space.lr: value 0.5 is outside low..high",
    ),
    "zero_trials": (GOOD.replace("trials: 2", "trials: 0"), "trials: Input should be greater than 0"),
    "too_many_gpus": (GOOD + "resources: {cpus: 1, gpus: 64}\n", "resources.gpus: 64 per trial but this machine has"),
    "unknown_hyperparameter": (GOOD + "fixed: {depth: 3}\n", "depth not hyperparameters of digits-mlp"),
    "bad_name": (GOOD.replace("name: tiny", "name: ../x"), "name: '../x' is not allowed"),
    "not_a_mapping": ("- just\n- a list\n", "a study must be a YAML mapping"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_study_file_exits_2_with_one_line_and_writes_nothing(case, cli, home, tmp_path):
    text, expected = CASES[case]
    path = write_study(tmp_path / "study.yaml", text)
    code, out, err = cli("run", path)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert str(path) in lines[0]
    assert expected in lines[0], lines[0]
    assert not home.exists(), "a bad study must write nothing (no MLflow store, no Ray folder)"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--trials", "0"], "--trials: Input should be greater than 0"),
        (["--max-concurrent", "0"], "--max-concurrent: Input should be greater than or equal to 1"),
        (["--gpus-per-trial", "8"], "resources.gpus: 8 per trial but this machine has"),
        (["--hours", "-1"], "--hours: Input should be greater than 0"),
        (["--trials", "x"], "argument --trials: invalid int value"),
    ],
)
def test_bad_flags_exit_2(flags, expected, cli, home):
    code, out, err = cli("run", "digits-mlp", *flags)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert not home.exists()


def test_unknown_builtin_study_lists_builtins(cli, home):
    code, _, err = cli("run", "no-such-study")
    assert code == 2
    assert "unknown study 'no-such-study'; built-in: cifar10-resnet, digits-autoencoder, digits-cnn, " in err
    assert not home.exists()


def test_missing_study_file(cli, home, tmp_path):
    code, _, err = cli("run", tmp_path / "missing.yaml")
    assert code == 2 and "no such study file" in err


@pytest.mark.parametrize("command", ["results", "promote"])
def test_study_name_is_checked_before_use(command, cli, home):
    code, _, err = cli(command, "../etc")
    assert code == 2 and "invalid study name '../etc'" in err
    assert not home.exists()


@pytest.mark.parametrize("command", ["results", "promote"])
def test_reading_a_study_without_records_is_a_user_error_and_creates_nothing(command, cli, home):
    code, _, err = cli(command, "digits-cnn")
    assert code == 2 and "no records for study 'digits-cnn'" in err
    assert not home.exists()


def test_builtin_catalog_validates():
    from studies import builtin_studies, load_study

    assert {"digits-cnn", "digits-mlp"} <= set(builtin_studies())
    for name in builtin_studies():
        spec = load_study(name)
        assert spec.name == name
        with pytest.raises(pydantic.ValidationError):
            spec.trials = 3  # frozen


def test_spec_rejects_reserved_and_duplicate_params():
    from studies import UserError, parse_spec

    base = {"name": "x", "trainable": "digits-mlp"}
    with pytest.raises(UserError, match="epochs"):
        parse_spec({**base, "fixed": {"epochs": 3}}, "s.yaml")
    with pytest.raises(UserError, match="both searched"):
        parse_spec(
            {**base, "space": {"lr": {"type": "float", "low": 0.1, "high": 0.2}}, "fixed": {"lr": 0.1}}, "s.yaml"
        )
    with pytest.raises(UserError, match="grace_period"):
        parse_spec({**base, "asha": {"max_t": 2, "grace_period": 3}}, "s.yaml")


def test_epochs_are_searchable_only_with_asha_off():
    from studies import UserError, parse_spec

    base = {"name": "x", "trainable": "digits-mlp"}
    epochs = {"type": "int", "low": 2, "high": 6}
    with pytest.raises(UserError, match=r"'epochs' cannot be in space or fixed: it is set by asha.max_t"):
        parse_spec({**base, "space": {"epochs": epochs}}, "s.yaml")
    for off in (False, "off", None):  # YAML's bare `off` arrives as False
        spec = parse_spec({**base, "asha": off, "space": {"epochs": epochs}}, "s.yaml")
        assert spec.asha is None and spec.max_t == 6
    assert parse_spec({**base, "asha": False, "fixed": {"epochs": 3}}, "s.yaml").max_t == 3
    with pytest.raises(UserError, match="asha: off: give epochs in fixed or space"):
        parse_spec({**base, "asha": False}, "s.yaml")
    with pytest.raises(UserError, match="space.epochs: an int parameter"):
        parse_spec({**base, "asha": False, "space": {"epochs": {"type": "float", "low": 1, "high": 2}}}, "s.yaml")
    assert parse_spec(base, "s.yaml").max_t == 10  # ASHA's default max_t


def test_a_user_error_in_its_own_process_is_one_line_although_ray_was_starting_meanwhile(home):
    # `hpsearch run` as a process starts Ray in the background while it reads the study; a mistake found
    # meanwhile must still be the one line, with Ray's start-up notices held back and Ray shut down.
    plain = run_cli("run", "no-such-study", env={"HPSEARCH_HOME": str(home)})
    assert plain.returncode == 2 and "unknown study 'no-such-study'" in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    assert not home.exists()
