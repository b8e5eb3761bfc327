"""k-fold cross-validation of `from_model` trainables (FOLD_KEY, fold_plan) and their held-out predictions.

Real torch on scikit-learn's digits (digits-mlp, digits-multi-input) and on small synthetic from_model trainables:
a regression, a multi-input tuple, a Dataset, uint8 images, a segmentation."""

import numpy as np
import pytest
import torch
from torch import nn

from trainables import FOLD_KEY, MemoryReporter, can_score, fold_plan, from_model, get_trainable, held_score
from trainables import release_caches as _release
from trainables._digits_pairs import DigitsData

QUICK = {"epochs": 1, "batch_size": 64}


def _trained(trainable, config, seed=0):
    reporter = MemoryReporter(seed=seed, metric=trainable.metric, mode=trainable.mode)
    trainable.train(config, reporter)
    return reporter.checkpoints[-1]["model"]


def _folds(trainable, k, extra=None):
    """Each fold's Held, from a one-epoch model trained on that fold."""
    configs = [{**trainable.defaults, **QUICK, **(extra or {}), FOLD_KEY: [i, k]} for i in range(k)]
    return [trainable.predict(c, _trained(trainable, c)) for c in configs]


def test_folds_partition_the_pooled_train_and_val_stratified_and_give_out_of_fold_predictions_once():
    mlp = get_trainable("digits-mlp")
    digits = DigitsData(0)
    pooled = np.concatenate([digits.raw["train"][1], digits.raw["val"][1]])  # train first, then val
    held = _folds(mlp, 3)
    index = np.concatenate([h.index for h in held])
    order = np.argsort(index)
    assert np.array_equal(index[order], np.arange(len(pooled)))  # every pooled example held out exactly once
    assert np.array_equal(np.concatenate([h.targets for h in held])[order], pooled)
    assert all(h.outputs.dtype == np.float32 and h.outputs.shape == (len(h.index), 10) for h in held)
    for h in held:  # stratified: each class's share of a fold within one example of its share of the pool
        shares = np.bincount(h.targets, minlength=10) - np.bincount(pooled, minlength=10) / 3
        assert np.abs(shares).max() <= 1
    plan = fold_plan(mlp, {}, 3)
    assert plan == {"folds": 3, "examples": len(pooled), "stratified": True, "seed": 0, "digest": plan["digest"]}


def _wave(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g)
    return x, (x @ torch.tensor([1.0, -2.0, 0.5]) + 0.05 * torch.randn(n, generator=g))


TEST_READS = []


def _wave_data(config):
    x, y = _wave()

    def test():
        TEST_READS.append(config["split_seed"])
        return x[100:], y[100:]

    return (x[:70], y[:70]), (x[70:100], y[70:100]), test


WAVE = from_model(lambda c: nn.Linear(3, 1), _wave_data, task="regression", name="test-folds-wave")


def test_the_same_split_seed_gives_the_same_folds_and_another_seed_other_folds():
    first, again, other = (fold_plan(WAVE, {"split_seed": s}, 4) for s in (7, 7, 8))
    assert first == again and first["examples"] == 100 and first["stratified"] is False
    assert other["digest"] != first["digest"] and other["seed"] == 8
    state = WAVE.setup({}).model().state_dict()
    held = {s: WAVE.predict({"split_seed": s, FOLD_KEY: [0, 4]}, state).index for s in (7, 8)}
    assert len(held[7]) == 25 and not np.array_equal(held[7], held[8])
    assert np.array_equal(WAVE.predict({"split_seed": 7, FOLD_KEY: [0, 4]}, state).index, held[7])
    assert np.array_equal(WAVE.predict({}, state).index, np.arange(30))  # unfolded: positions in the val split


def test_held_score_of_one_model_is_what_evaluate_reports_on_its_val_split():
    smoothed = {"label_smoothing": 0.1}  # val_loss as the loop computes it, from the config
    for trainable, config in ((get_trainable("digits-mlp"), smoothed), (WAVE, {"lr": 0.05, "epochs": 3})):
        for fold in (None, [1, 3]):
            folded = {**trainable.defaults, **QUICK, **config, **({FOLD_KEY: fold} if fold else {})}
            state = _trained(trainable, folded)
            held, reported = trainable.predict(folded, state), trainable.evaluate(folded, state, "val")
            metrics = [m for m in reported if can_score(trainable.task, m)]
            assert len(metrics) >= 2  # val_loss and the task's own
            for metric in metrics:
                assert held_score(trainable.task, metric, held.outputs, held.targets, config=folded) == pytest.approx(
                    reported[metric], rel=1e-6, abs=1e-9
                ), (trainable.name, fold, metric)


def test_no_folded_hook_reads_the_test_split(monkeypatch):
    reads = []
    original = DigitsData.split
    monkeypatch.setattr(DigitsData, "split", lambda self, name: reads.append(name) or original(self, name))
    _release()  # the worker's cached data would hide the reads
    mlp, config = get_trainable("digits-mlp"), {**QUICK, FOLD_KEY: [2, 3]}
    state = _trained(mlp, config)
    held = mlp.predict(config, state)
    model, example = mlp.export(config, state)
    x, y, shape = mlp.samples(config, "val")  # the report's samples: the fold's held-out part
    assert np.array_equal(y, held.targets) and x.shape == (len(held.index), 64) and shape == (8, 8)
    fold_plan(mlp, config, 3)
    assert "train" in reads and "val" in reads and "test" not in reads
    TEST_READS.clear()
    _release()
    wave = {"lr": 0.05, FOLD_KEY: [0, 2]}
    WAVE.train(wave, MemoryReporter(metric="val_mse", mode="min"))
    WAVE.predict(wave, WAVE.setup(wave).model().state_dict())
    WAVE.export(wave, WAVE.setup(wave).model().state_dict())
    assert TEST_READS == []
    state = WAVE.setup({}).model().state_dict()
    tested = WAVE.predict({}, state, "test")  # an ensemble's one test evaluation: the counter counts it
    assert TEST_READS == [0] and np.array_equal(tested.index, np.arange(20))
    reported = WAVE.evaluate({}, state, "test")
    assert held_score("regression", "val_mse", tested.outputs, tested.targets) == pytest.approx(reported["test_mse"])


def test_the_fold_is_normalised_with_its_own_training_part():
    mlp = get_trainable("digits-mlp")
    config = {**mlp.defaults, FOLD_KEY: [0, 3]}
    state = mlp.setup(config).model().state_dict()
    digits = DigitsData(0)
    pooled = np.concatenate([digits.raw["train"][0], digits.raw["val"][0]])
    kept = np.setdiff1d(np.arange(len(pooled)), mlp.predict(config, state).index)
    served, _ = mlp.export(config, state)
    assert float(served.preprocess.mean) == pytest.approx(pooled[kept].mean(), rel=1e-5)
    assert float(served.preprocess.mean) != pytest.approx(digits.mean, rel=1e-5)  # not the user's train split's
    assert float(mlp.export({**mlp.defaults}, state)[0].preprocess.mean) == pytest.approx(digits.mean)


def test_built_in_images_fold_with_the_folds_statistics_and_score_reconstructions_as_evaluate_does():
    from trainables._datasets import load_dataset

    autoencoder = get_trainable("digits-autoencoder")
    config = {**autoencoder.defaults, FOLD_KEY: [0, 3]}
    state = autoencoder.setup(config).model().state_dict()  # untrained: the arithmetic is what is compared
    held, reported = autoencoder.predict(config, state), autoencoder.evaluate(config, state, "val")
    assert held.targets.shape == held.outputs.shape == (len(held.index), 1, 8, 8)  # the pixels, 0..1
    for metric in ("val_loss", "val_mse", "val_psnr"):
        assert held_score("reconstruction", metric, held.outputs, held.targets) == pytest.approx(reported[metric])
    digits = load_dataset("digits", None)
    pooled = torch.cat((digits.x["train"], digits.x["val"]))
    kept = torch.from_numpy(np.setdiff1d(np.arange(len(pooled)), held.index))
    served, _ = autoencoder.export(config, state)
    assert float(served.mean) == pytest.approx(float(pooled[kept].double().div(255).mean()), rel=1e-6)
    assert float(served.mean) != pytest.approx(digits.mean[0], rel=1e-6)  # not the data set's training split's


class _Pair(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.a, self.b = nn.Linear(4, 2), nn.Linear(2, 2)

    def forward(self, a, b):
        return self.a(a) + self.b(b)


class _Shift(nn.Module):
    """Subtracts each input's training mean: where the fold's statistics show up."""

    def __init__(self, a, b):
        super().__init__()
        self.register_buffer("a_mean", a.mean(0))
        self.register_buffer("b_mean", b.mean(0))

    def forward(self, a, b):
        return a - self.a_mean, b - self.b_mean


def _pair_data(config):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(90, 4, generator=g), torch.randn(90, 2, generator=g)
    y = (a[:, 0] + b[:, 1] > 0).long()
    return ((a[:60], b[:60]), y[:60]), ((a[60:75], b[60:75]), y[60:75]), ((a[75:], b[75:]), y[75:])


PAIR = from_model(_Pair, _pair_data, preprocess=lambda config, inputs: _Shift(*inputs), name="test-folds-pair")


def test_a_tuple_of_inputs_folds_with_its_preprocessing_fitted_on_the_fold():
    config = {**QUICK, "batch_size": 16, FOLD_KEY: [1, 3]}
    state = _trained(PAIR, config)
    held = PAIR.predict(config, state)
    (a, b), _ = _pair_data({})[0]
    (va, vb), _ = _pair_data({})[1]
    pooled_a = torch.cat((a, va))
    kept = np.setdiff1d(np.arange(75), held.index)
    served, example = PAIR.export(config, state)
    assert torch.allclose(served.preprocess.a_mean, pooled_a[kept].mean(0))
    assert served(torch.from_numpy(example)).shape == (4, 2)  # packed raw inputs: (4, 4 + 2)
    folds = [PAIR.predict({**config, FOLD_KEY: [i, 3]}, state).index for i in range(3)]
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(75))


class _Items(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _images(n, seed):
    """uint8 images (3, 6, 6): dark for class 0, bright for class 1, with a class of 2 examples (class 2)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat((torch.arange(n - 2) % 2, torch.tensor([2, 2])))
    x = (torch.rand(n, 3, 6, 6, generator=g) * 100 + 120 * (y[:, None, None, None] > 0)).to(torch.uint8)
    return _Items(x, y)


def _image_model(config):
    return nn.Sequential(nn.Flatten(), nn.Linear(108, 3))


def _image_data(config):
    return _images(40, 0), _images(12, 1), _images(12, 2)


IMAGES = from_model(_image_model, _image_data, name="test-folds-images")
STREAMED = from_model(_image_model, _image_data, name="test-folds-streamed", materialise_mb=0)


def test_a_dataset_of_uint8_images_folds_with_the_folds_statistics_and_a_small_class_is_refused():
    with pytest.raises(ValueError, match=r"^class 2 has 4 examples .* fewer than the 5 folds") as refused:
        fold_plan(IMAGES, {}, 5)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="class 2 has 4 examples"):
        IMAGES.train({**QUICK, FOLD_KEY: [0, 5]}, MemoryReporter())
    config = {**QUICK, "batch_size": 8, FOLD_KEY: [3, 4]}
    state = _trained(IMAGES, config)
    held = IMAGES.predict(config, state)
    assert fold_plan(IMAGES, {}, 4)["examples"] == 52 and len(held.index) == 13
    pooled = torch.cat((_image_data({})[0].x, _image_data({})[1].x))
    kept = torch.from_numpy(np.setdiff1d(np.arange(52), held.index))
    mean = pooled[kept].double().div(255).mean(dim=(0, 2, 3))
    served, example = IMAGES.export(config, state)
    assert torch.allclose(served.mean.flatten().double(), mean, atol=1e-6)
    assert example.dtype == np.uint8
    with pytest.raises(ValueError, match=r"^cross-validation folds need the train split in memory") as streamed:
        fold_plan(STREAMED, {}, 2)
    assert "\n" not in str(streamed.value)


def test_a_segmentation_folds_unstratified_and_scores_its_masks_as_evaluate_does():
    def data(config):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(60, 1, 5, 5, generator=g)
        return *((x[s], (x[s, 0] > 0).long()) for s in (slice(0, 30), slice(30, 45))), (x[45:], (x[45:, 0] > 0).long())

    seg = from_model(lambda c: nn.Conv2d(1, 2, 1), data, task="segmentation", name="test-folds-seg")
    config = {**QUICK, "batch_size": 8, FOLD_KEY: [0, 3]}
    state = _trained(seg, config)
    held, reported = seg.predict(config, state), seg.evaluate(config, state, "val")
    assert fold_plan(seg, {}, 3)["stratified"] is False and held.targets.shape == (15, 5, 5)
    for metric in ("val_loss", "val_accuracy", "val_iou", "val_dice"):
        assert held_score("segmentation", metric, held.outputs, held.targets) == pytest.approx(reported[metric])


def test_a_plain_train_function_and_the_dcgan_cannot_fold():
    dcgan = get_trainable("digits-dcgan")
    assert dcgan.can_fold is False and dcgan.predict is None and dcgan.task is None
    assert not can_score(None, "val_fid") and not can_score("classification", "val_fid")
    with pytest.raises(ValueError, match="cannot be cross-validated"):
        fold_plan(dcgan, {}, 3)
    with pytest.raises(ValueError, match="at least 2"):
        fold_plan(WAVE, {}, 1)
    for bad in ([3, 3], [0, 1], "0/3", [0.0, 3]):
        with pytest.raises(ValueError, match=FOLD_KEY):
            WAVE.predict({FOLD_KEY: bad}, WAVE.setup({}).model().state_dict())
