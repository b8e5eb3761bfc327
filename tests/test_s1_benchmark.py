"""S1's parts that run without a sweep: the regression task's trainable, the digits written as MNIST files for
the image task, and the tables read back from the benchmark's JSONL (benchmarks/s1_final_model.py)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks._s1_summary import bootstrap_interval, compare, summary
from benchmarks._s1_tasks import TASKS, write_digits_as_mnist
from tests.conftest import REPO


def test_the_diabetes_trainable_trains_tests_and_serves_raw_inputs():
    from trainables import MemoryReporter, get_trainable

    trainable = get_trainable("benchmarks.s1_diabetes:trainable")
    assert (trainable.metric, trainable.mode) == ("val_mse", "min")
    config = {"epochs": 3, "lr": 3e-3, "split_seed": 1}
    reporter = MemoryReporter(metric="val_mse", mode="min")
    trainable.train(config, reporter)
    assert [r["epoch"] for r in reporter.results] == [1, 2, 3]
    assert all(0 < r["val_mse"] < 2 for r in reporter.results)  # standardised target: MSE near 1 - R^2
    state = reporter.checkpoints[-1]["model"]
    tested = trainable.evaluate(config, state, "test")
    assert set(tested) >= {"test_mse", "test_mae"}

    from benchmarks.s1_diabetes import data

    train, val, test = data({"split_seed": 1})
    assert (len(train[1]), len(val[1]), len(test[1])) == (282, 71, 89)
    assert abs(float(train[1].mean())) < 1e-5 and abs(float(train[1].std()) - 1) < 1e-4
    model, example = trainable.export(config, state)  # raw features in: the standardising layer is part of it
    assert example.shape[1] == 10 and example[:, 0].min() >= 18  # raw ages in years, not standardised values
    assert model(__import__("torch").from_numpy(example)).shape == (len(example), 1)


def test_digits_written_as_mnist_files_load_through_the_mnist_trainables_loader(tmp_path):
    from sklearn.datasets import load_digits

    from trainables._datasets import load_dataset

    root = write_digits_as_mnist(tmp_path, split_seed=3, side=16)
    data = load_dataset("mnist", root, split_seed=3)
    sizes = {split: len(data.y[split]) for split in ("train", "val", "test")}
    assert sizes["test"] == 360 and sum(sizes.values()) == 1797  # the 20% test split, the rest train + val
    assert tuple(data.x["train"].shape[1:]) == (1, 16, 16)
    assert np.bincount(data.y["test"].numpy()).min() >= 35  # stratified: every digit about 36 times
    again = load_dataset("mnist", write_digits_as_mnist(tmp_path / "again", split_seed=3, side=16), split_seed=3)
    assert data.fingerprint == again.fingerprint
    other = load_dataset("mnist", write_digits_as_mnist(tmp_path / "other", split_seed=4, side=16), split_seed=4)
    assert other.fingerprint != data.fingerprint
    ink = data.x["test"].float().mean().item() / 255
    assert abs(ink - load_digits().data.mean() / 16) < 0.05  # upsampled, not rescaled


def test_every_task_is_a_valid_study_for_each_seed(tmp_path):
    from studies import parse_spec

    for task in TASKS.values():
        spec = parse_spec(task.study(5, tmp_path / task.name), "s1")
        assert (spec.seed, spec.split_seed, spec.trials, spec.max_concurrent) == (5, 5, 16, 2)
        assert (spec.data_root is not None) == task.image_data


def test_bootstrap_interval_and_paired_wins():
    assert bootstrap_interval([0.01] * 8) == pytest.approx((0.01, 0.01))
    low, high = bootstrap_interval([0.0, 0.02, 0.01, 0.03, -0.01, 0.02, 0.01, 0.0])
    assert low < 0.01 < high and low > -0.01 and high < 0.03
    assert bootstrap_interval([1.0, 2.0, 3.0]) == bootstrap_interval([1.0, 2.0, 3.0])  # a fixed RNG
    base = {s: {"test": 0.5} for s in range(4)}
    arm = {0: {"test": 0.4}, 1: {"test": 0.5}, 2: {"test": 0.6}, 3: {"test": 0.3}}
    lower_is_better = compare(arm, base, "min")
    assert (lower_is_better["wins"], lower_is_better["ties"], lower_is_better["losses"]) == (2, 1, 1)
    assert lower_is_better["won"] == [0, 3]
    higher_is_better = compare(arm, base, "max")
    assert (higher_is_better["wins"], higher_is_better["losses"]) == (1, 2)
    assert compare(arm, {9: {"test": 0.5}}, "max") is None


def _lines(path, task="digits-mlp"):
    rows = []
    for seed in range(8):
        common = {"task": task, "seed": seed, "metric": "test_accuracy", "wall_s": 10.0}
        rows.append({**common, "arm": "a", "test": 0.95, "sweep_s": 20.0, "epochs": 60})
        rows.append({**common, "arm": "b", "test": 0.95 + (0.02 if seed < 4 else 0), "sweep_s": 20.0, "epochs": 60})
        promotion = {"compute_s": 8.0, "sweep_s": 20.0, "compute_epochs": 30, "sweep_epochs": 60}
        kind = "ensemble" if seed % 2 else "single"
        rows.append({**common, "arm": "e", "test": 0.97 if seed < 6 else 0.94, "kind": kind, **promotion})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_summary_reads_the_target_off_the_ensemble_arm(tmp_path):
    path = tmp_path / "s1.jsonl"
    _lines(path)
    table = summary([json.loads(line) for line in path.read_text().splitlines()], TASKS)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| (")}
    assert "| 8 | 95.00 ± 0.00 |" in rows["(a) hand-wired Tune + OptunaSearch + ASHA + MLflow, single best"]
    assert (
        "| +1.00 [" in rows["(b) hpsearch sweep best"]
        and "| 4/4/0 (seeds 0,1,2,3) |" in rows["(b) hpsearch sweep best"]
    )
    ensemble = rows["(e) promote --candidates 3 --reseeds 2 --ensemble 5"]
    assert "| +1.25 [" in ensemble and "| 6/0/2 (seeds 0,1,2,3,4,5) |" in ensemble and "8 s (40%), 30 (50%)" in ensemble
    assert "(e) registered the ensemble on 4 of 8 seeds" in table
    # +1.25 points, 6 of 8 seeds, 40% more compute: each part met
    assert table.splitlines()[-1].endswith("-> met") and table.count("NOT met") == 0


def test_the_script_prints_the_summary_and_refuses_an_unknown_arm_in_one_line(tmp_path):
    path = tmp_path / "s1.jsonl"
    _lines(path)
    script = [sys.executable, str(REPO / "benchmarks" / "s1_final_model.py")]
    shown = subprocess.run([*script, "--summary", "--out", str(path)], capture_output=True, text=True, cwd=REPO)
    assert shown.returncode == 0 and "### digits-mlp: test_accuracy (%)" in shown.stdout
    work = tmp_path / "work"
    refused = subprocess.run(
        [*script, "--arms", "a,z", "--out", str(path), "--work", str(work)], capture_output=True, text=True, cwd=REPO
    )
    assert refused.returncode == 2 and "--arms: unknown z" in refused.stderr and "Traceback" not in refused.stderr
    assert not work.exists() and len(path.read_text().splitlines()) == 24  # nothing written
