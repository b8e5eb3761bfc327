"""The digits pairs and the shared loop, with no tuner at all (a MemoryReporter)."""

import io
import math

import numpy as np
import pytest
import torch

from trainables import STOP_DIVERGED, STOP_EARLY, MemoryReporter, get_trainable
from trainables._digits_pairs import DigitsData, build_cnn, build_mlp

FAST = {"epochs": 3, "lr": 3e-3, "batch_size": 64}


def test_splits_are_stratified_disjoint_and_fixed_by_split_seed():
    a, b, c = DigitsData(0), DigitsData(0), DigitsData(1)
    sizes = {k: len(v[1]) for k, v in a.raw.items()}
    assert sizes == {"train": 1149, "val": 288, "test": 360}
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a.raw[name][0], b.raw[name][0])
        counts = np.bincount(a.raw[name][1], minlength=10) / sizes[name]
        assert counts.min() > 0.08 and counts.max() < 0.12  # every class near 1/10
    idx = {k: set(v.tolist()) for k, v in a.indices.items()}
    assert not (idx["train"] & idx["val"]) and not (idx["train"] & idx["test"]) and not (idx["val"] & idx["test"])
    assert len(idx["train"] | idx["val"] | idx["test"]) == 1797
    assert a.fingerprint == b.fingerprint != c.fingerprint
    train_pixels = a.split("train").x  # raw: the model's preprocessing normalises, with the training split's statistics
    assert a.mean == pytest.approx(train_pixels.mean().item()) and a.std == pytest.approx(
        train_pixels.std().item(), rel=1e-3
    )
    assert train_pixels.max() == 16 and not np.isclose(a.mean, a.raw["val"][0].mean(), atol=1e-4)


@pytest.mark.parametrize("build, shape", [(build_mlp, (5, 64)), (build_cnn, (5, 1, 8, 8))])
def test_models_map_inputs_to_ten_logits_and_backprop(build, shape):
    model = build({"hidden": 32, "layers": 2, "dropout": 0.1, "channels1": 8, "channels2": 16})
    out = model(torch.randn(shape))
    assert out.shape == (5, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_training_reports_every_epoch_and_learns(name):
    reporter = MemoryReporter(seed=0)
    get_trainable(name).train({**FAST, "epochs": 4}, reporter)
    assert [r["epoch"] for r in reporter.results] == [1, 2, 3, 4]
    for key in ("train_loss", "val_loss", "val_accuracy", "samples_per_s", "peak_mem_mb"):
        assert all(math.isfinite(r[key]) for r in reporter.results), key
    assert reporter.results[-1]["val_accuracy"] > 0.85
    assert reporter.results[-1]["train_loss"] < reporter.results[0]["train_loss"]
    # a checkpoint whenever the best value improved, and only then
    improved = [
        i
        for i, r in enumerate(reporter.results)
        if r["val_accuracy"] > max([x["val_accuracy"] for x in reporter.results[:i]], default=-1)
    ]
    assert len(reporter.checkpoints) == len(improved)


def test_checkpoint_loads_with_weights_only_and_revalidates_exactly():
    trainable = get_trainable("digits-cnn")
    reporter = MemoryReporter(seed=0)
    trainable.train(FAST, reporter)
    best = reporter.checkpoints[-1]
    buffer = io.BytesIO()
    torch.save(best, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    again = trainable.evaluate(dict(loaded["config"]), loaded["model"], "val")
    assert again["val_accuracy"] == pytest.approx(best["value"], abs=1e-6)


def test_restore_continues_as_if_never_interrupted():
    trainable = get_trainable("digits-mlp")
    config = {**FAST, "epochs": 4, "lr": 1e-3}
    straight = MemoryReporter(seed=7)
    trainable.train(config, straight)
    # Resume from the checkpoint of the last epoch that improved, and train the rest.
    ckpt = straight.checkpoints[-2] if len(straight.checkpoints) > 1 else straight.checkpoints[0]
    done = ckpt["progress"]["epoch"]
    resumed = MemoryReporter(seed=7, checkpoint=ckpt)
    trainable.train(config, resumed)
    assert [r["epoch"] for r in resumed.results] == list(range(done + 1, 5))
    for a, b in zip(straight.results[done:], resumed.results):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-9)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-9)


def test_same_seed_same_metrics_other_seed_other_metrics():
    runs = []
    for seed in (3, 3, 4):
        r = MemoryReporter(seed=seed)
        get_trainable("digits-cnn").train(FAST, r)
        runs.append([x["val_loss"] for x in r.results])
    assert runs[0] == runs[1] != runs[2]


def test_nan_loss_stops_the_trial_as_diverged():
    reporter = MemoryReporter(seed=0)
    get_trainable("digits-mlp").train({**FAST, "lr": 1e12, "optimizer": "sgd", "epochs": 5}, reporter)
    assert reporter.results[-1]["stop_reason"] == STOP_DIVERGED
    assert len(reporter.results) < 5


def test_patience_stops_the_trial_itself():
    # lr 0: nothing improves after epoch 1, so patience 2 ends the trial at epoch 3 of 10.
    reporter = MemoryReporter(seed=0)
    get_trainable("digits-mlp").train({**FAST, "lr": 0.0, "epochs": 10, "patience": 2}, reporter)
    assert [r["epoch"] for r in reporter.results] == [1, 2, 3]
    assert reporter.results[-1]["stop_reason"] == STOP_EARLY


def test_gradient_clipping_and_sgd_paths_train():
    reporter = MemoryReporter(seed=0)
    get_trainable("digits-mlp").train({**FAST, "optimizer": "sgd", "lr": 0.05, "clip_grad_norm": 1.0}, reporter)
    assert reporter.results[-1]["val_accuracy"] > 0.8


def test_reporter_rejects_reserved_names_and_marks_non_finite_as_diverged():
    reporter = MemoryReporter()
    with pytest.raises(ValueError, match="reserved"):
        reporter.report(1, {"epoch": 1.0})
    reporter.report(1, {"val_loss": float("nan")})
    assert reporter.results[-1]["stop_reason"] == STOP_DIVERGED


def test_worker_cache_builds_once():
    calls = []
    reporter = MemoryReporter()
    for _ in range(3):
        reporter.cached(("test-cache", id(calls)), lambda: calls.append(1) or "data")
    assert calls == [1]


def test_export_predicts_from_raw_pixels():
    trainable = get_trainable("digits-cnn")
    reporter = MemoryReporter(seed=0)
    trainable.train(FAST, reporter)
    best = reporter.checkpoints[-1]
    model, example = trainable.export(dict(best["config"]), best["model"])
    assert example.dtype == np.float32 and example.shape == (4, 64) and example.max() > 1  # raw 0..16 pixels
    x, y = DigitsData(0).raw["test"]
    accuracy = (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert accuracy > 0.85


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_cuda_when_present():
    reporter = MemoryReporter(seed=0)
    get_trainable("digits-cnn").train(FAST, reporter)
    assert reporter.results[-1]["peak_mem_mb"] > 0 and reporter.results[-1]["val_accuracy"] > 0.85
