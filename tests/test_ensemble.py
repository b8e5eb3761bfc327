"""Ensembles: forward selection with replacement on synthetic predictions whose answer is known, the same
arithmetic in `combine` and `Ensemble`, and an ensemble of real digits-mlp models logged to MLflow as one
servable model and loaded by pyfunc in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import REPO
from trainables import Ensemble, MemoryReporter, combine, get_trainable, greedy_select, held_score

N = 200
Y = np.arange(N) % 2  # two classes


def _logits(margin_first: float, margin_second: float) -> np.ndarray:
    """Two-class logits whose correct class leads by `margin_first` on the first half, `margin_second` after."""
    margin = np.where(np.arange(N) < N // 2, margin_first, margin_second)
    out = np.zeros((N, 2), dtype=np.float32)
    out[np.arange(N), Y] = margin
    return out


def _accuracy(outputs):
    return held_score("classification", "val_accuracy", outputs, Y)


def test_two_complementary_members_beat_either_alone_and_the_best_prefix_is_kept():
    members = {"a": _logits(3.0, -1.0), "b": _logits(-1.0, 3.0)}  # each right on its own half only
    assert _accuracy(members["a"]) == _accuracy(members["b"]) == 0.5
    chosen = greedy_select(members, Y, _accuracy, "max", 5, "classification")
    # a first (a tie, the earlier name), then b: both halves right; a third step (aab) tips b's half back to
    # wrong; later steps that tie at 1.0 leave the earliest, shortest best prefix kept.
    assert chosen.path[:3] == [0.5, 1.0, 0.5] and len(chosen.path) == 5 and max(chosen.path) == 1.0
    assert chosen.weights == {"a": 0.5, "b": 0.5} and chosen.score == 1.0
    assert greedy_select(members, Y, _accuracy, "max", 5, "classification") == chosen  # deterministic
    assert _accuracy(combine("classification", list(members.values()), [0.5, 0.5])) == 1.0


def test_a_dominant_member_gets_all_the_weight_when_minimising():
    members = {"noisy": _logits(0.5, -0.5), "sure": _logits(4.0, 4.0)}

    def loss(outputs):
        return held_score("classification", "val_loss", outputs, Y)

    chosen = greedy_select(members, Y, loss, "min", 4, "classification")
    assert chosen.weights == {"sure": 1.0} and chosen.score == pytest.approx(loss(members["sure"]))
    assert chosen.path[0] == chosen.score and all(v >= chosen.score for v in chosen.path)


def test_regression_members_with_opposite_biases_are_averaged():
    targets = np.linspace(-1, 1, 50).astype(np.float32)
    members = {"low": targets - 0.5, "high": targets + 0.5, "far": targets + 2.0}

    def mse(outputs):
        return held_score("regression", "val_mse", outputs, targets)

    chosen = greedy_select(members, targets, mse, "min", 6, "regression")
    assert chosen.weights == {"low": 0.5, "high": 0.5} and chosen.score == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="mode must be max or min"):
        greedy_select(members, targets, mse, "lowest", 3, "regression")
    with pytest.raises(ValueError, match="one row per target"):
        greedy_select(members, targets[:10], mse, "min", 3, "regression")


@pytest.mark.parametrize("task", ["classification", "segmentation", "regression"])
def test_combine_is_the_ensembles_forward(task):
    torch.manual_seed(0)
    shape = (6, 3, 4, 4) if task == "segmentation" else (6, 3)
    members = [nn.Conv2d(3, 3, 1) if task == "segmentation" else nn.Linear(3, 3) for _ in range(3)]
    x = torch.randn(*shape)
    ensemble = Ensemble(members, [1.0, 2.0, 1.0], task).eval()
    assert torch.allclose(ensemble.weights, torch.tensor([0.25, 0.5, 0.25]))
    with torch.no_grad():
        served, outputs = ensemble(x).numpy(), [m(x).numpy() for m in members]
    assert np.allclose(served, combine(task, outputs, [1, 2, 1]), atol=1e-5)
    if task != "regression":  # exp of the output: the averaged probability, summing to one
        assert np.allclose(np.exp(served).sum(1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="one weight per member"):
        Ensemble(members, [1.0], task)


LOAD = textwrap.dedent(
    """
    import sys, mlflow, numpy as np
    mlflow.set_tracking_uri(sys.argv[1])
    served = mlflow.pyfunc.load_model(sys.argv[2])
    np.save(sys.argv[3], np.asarray(served.predict(np.load(sys.argv[4]))))
    """
)


def test_an_ensemble_of_digits_models_is_logged_and_served_by_mlflow_from_raw_pixels(tmp_path):
    import tracking
    from trainables._digits_pairs import DigitsData

    mlp = get_trainable("digits-mlp")
    members, weights = [], [0.25, 0.75]
    for hidden in (32, 64):
        config = {**mlp.defaults, "hidden": hidden, "epochs": 2}
        reporter = MemoryReporter(seed=hidden)
        mlp.train(config, reporter)
        members.append(mlp.export(config, reporter.checkpoints[-1]["model"]))
    example = members[0][1]
    ensemble = Ensemble([m for m, _ in members], weights, "classification")

    store = tracking.Store(home=tmp_path / "home")
    store.use()
    run_id = store.client.create_run(store.experiment_id("ensemble", create=True)).info.run_id
    uri = tracking.log_servable_model(store, run_id, ensemble, example)
    assert list((tmp_path / "home" / "artifacts").rglob("model.pt2"))  # in the store's home, not the cwd

    pixels = DigitsData(0).raw["val"][0][:50]  # raw 0..16 pixels, as a client sends them
    np.save(tmp_path / "x.npy", pixels)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [store.tracking_uri, uri, str(tmp_path / "out.npy"), str(tmp_path / "x.npy")]
    loaded = subprocess.run([sys.executable, "-c", LOAD, *args], env=env, capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    served = np.load(tmp_path / "out.npy")
    with torch.no_grad():
        probabilities = [torch.softmax(m(torch.from_numpy(pixels)), 1).numpy() for m, _ in members]
    expected = weights[0] * probabilities[0] + weights[1] * probabilities[1]
    assert served.shape == (50, 10) and np.allclose(np.exp(served), expected, atol=1e-5)
    assert np.array_equal(served.argmax(1), expected.argmax(1))
    assert json.loads(json.dumps(served.tolist()))  # finite: no -inf reaches a JSON client
