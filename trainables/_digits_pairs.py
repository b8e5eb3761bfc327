"""scikit-learn's bundled handwritten digits (1,797 8x8 images, pixels 0..16): real data that ships offline.

Splits: a stratified held-out test split (20%), then a stratified validation split (20% of the rest), both
fixed by `split_seed` (`_loading.three_way`, the splitter the `digits` data set of `_datasets` uses too).
Normalisation statistics come from the training split alone. Both pairs are built on the public factory
(`trainables.from_model`), as a user's own model would be.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from ._factory import from_model
from ._folds import FOLD_KEY
from ._loading import three_way
from ._loop import Split
from ._lru import DATA_CONFIGS_KEPT, LRU
from ._registry import Trainable, register

N_CLASSES = 10
TEST_FRACTION = 0.2  # 360 of 1,797 images, never seen during the search
VAL_FRACTION = 0.2  # of the remaining 1,437: 288 validation, 1,149 training


class DigitsData:
    """The three splits as float arrays of raw pixels (0..16), plus the training split's statistics."""

    def __init__(self, split_seed: int):
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = digits.data.astype(np.float32)  # (1797, 64), the data set's natural form
        y = digits.target.astype(np.int64)
        self.split_seed = split_seed
        self.indices = three_way(y, len(y), TEST_FRACTION, VAL_FRACTION, split_seed)  # rows of load_digits()
        self.raw = {name: (x[i], y[i]) for name, i in self.indices.items()}
        # One channel, so one mean and one std, from the training split only (no peeking at val/test).
        train = self.indices["train"]
        self.mean = float(x[train].mean())
        self.std = float(x[train].std())
        h = hashlib.sha256()
        for i in self.indices.values():
            h.update(x[i].tobytes())
            h.update(y[i].tobytes())
        self.fingerprint = h.hexdigest()[:16]

    def split(self, name: str) -> Split:
        """A split's raw pixels (N, 64) and labels, as tensors."""
        x, y = self.raw[name]
        return Split(torch.from_numpy(x), torch.from_numpy(y))


_HOOKS_CACHE = LRU(DATA_CONFIGS_KEPT)  # split seeds (half a MiB each): what data(config) and the hooks read


def digits_data(split_seed: int) -> DigitsData:
    """The digits split by `split_seed`, built once per process (the DCGAN reads the same splits)."""
    return _HOOKS_CACHE.get_or_build(split_seed, lambda: DigitsData(split_seed))


def digits_for(config: dict) -> DigitsData:
    """`digits_data` for a trial's config (its split_seed, 0 when unset)."""
    return digits_data(int(config.get("split_seed", 0)))


class Preprocessed(nn.Module):
    """Raw digit pixels (N, 64) in 0..16 -> normalised with the training split's mean and std -> reshaped to
    the model's input. Runs in training and is baked into the MLflow model, which therefore serves raw pixels."""

    def __init__(self, mean: float, std: float, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mean) / self.std).reshape(-1, *self.shape)


# ---- models -------------------------------------------------------------------------------------------

MLP_HYPERPARAMETERS = {
    "hidden": "units in each hidden layer",
    "layers": "number of hidden layers",
    "dropout": "dropout probability before each large linear layer, 0..1",
}
MLP_DEFAULTS = {"hidden": 128, "layers": 2, "dropout": 0.2}


def build_mlp(config: dict) -> nn.Module:
    layers: list[nn.Module] = []
    width = 64
    for _ in range(int(config["layers"])):
        # Dropout where the parameters are (the large fully connected layers), not on the input's pixels.
        layers += [nn.Linear(width, int(config["hidden"])), nn.ReLU(), nn.Dropout(float(config["dropout"]))]
        width = int(config["hidden"])
    layers.append(nn.Linear(width, N_CLASSES))
    return nn.Sequential(*layers)


CNN_HYPERPARAMETERS = {
    "channels1": "output channels of the first conv block",
    "channels2": "output channels of the second conv block",
    "dropout": "dropout probability before the linear head, 0..1",
}
CNN_DEFAULTS = {"channels1": 16, "channels2": 32, "dropout": 0.2}


def build_cnn(config: dict) -> nn.Module:
    c1, c2 = int(config["channels1"]), int(config["channels2"])
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4x4 -> 2x2
        nn.Flatten(),
        nn.Dropout(float(config["dropout"])),
        nn.Linear(c2 * 4, N_CLASSES),
    )


# ---- the two pairs, on the public factory ------------------------------------------------------------------


def _splits(config: dict):
    """data(config) for the factory: raw pixels; the test split only when the test asks for it."""
    digits = digits_for(config)
    train = digits.split("train")
    subset = int(config["train_subset"])
    if subset:
        train = Split(train.x[:subset], train.y[:subset])
    val = digits.split("val")

    def test():
        split = digits.split("test")
        return split.x, split.y

    return (train.x, train.y), (val.x, val.y), test


def _digits_trainable(name: str, build, shape, hyperparameters, defaults, description) -> Trainable:
    trainable = from_model(
        build,
        _splits,
        name=name,
        description=description,
        # The training split's statistics, of all of it (a train_subset trains on fewer, normalised alike); a
        # cross-validation fold's, of its own training part.
        preprocess=lambda config, x: Preprocessed(*_stats(config, x), shape),
        hyperparameters={
            **hyperparameters,
            # A learning-curve knob: fewer examples make a task that does not saturate (benchmarks).
            "train_subset": "train on only the first N examples of the (shuffled) training split; 0 = all",
        },
        defaults={**defaults, "train_subset": 0},
    )

    def samples(config: dict, split: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        x, y, _ = factory_samples(config, split)  # a fold's, for a folded config
        return x, y, (8, 8)  # the report draws the flat pixels as the 8x8 images they are

    def data_info(config: dict) -> dict[str, Any]:
        data = digits_for({**trainable.defaults, **config})
        return {"dataset": "sklearn-digits", "fingerprint": data.fingerprint, "split_seed": data.split_seed}

    factory_samples = trainable.samples
    return register(dataclasses.replace(trainable, samples=samples, data_info=data_info))


def _stats(config: dict, train: torch.Tensor) -> tuple[float, float]:
    if FOLD_KEY in config:
        return float(train.mean()), float(train.std(unbiased=False))
    data = digits_for(config)
    return data.mean, data.std


digits_mlp = _digits_trainable(
    "digits-mlp", build_mlp, (64,), MLP_HYPERPARAMETERS, MLP_DEFAULTS, "MLP with dropout on sklearn digits"
)
digits_cnn = _digits_trainable(
    "digits-cnn",
    build_cnn,
    (1, 8, 8),
    CNN_HYPERPARAMETERS,
    CNN_DEFAULTS,
    "CNN (conv-relu-maxpool x2, linear head) on sklearn digits",
)
