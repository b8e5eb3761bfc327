"""scikit-learn's bundled handwritten digits (1,797 8x8 images, pixels 0..16): real data that ships offline.

Splits: a stratified held-out test split (20%), then a stratified validation split (20% of the rest), both
fixed by `split_seed`. Normalisation statistics come from the training split alone.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from ._check import Setup
from ._loop import LOOP_DEFAULTS, LOOP_HYPERPARAMETERS, Split, evaluate, fit, make_optimizer
from ._registry import Trainable, register
from ._reporter import Reporter

N_CLASSES = 10
TEST_FRACTION = 0.2  # 360 of 1,797 images, never seen during the search
VAL_FRACTION = 0.2  # of the remaining 1,437: 288 validation, 1,149 training


class DigitsData:
    """The three splits as float tensors of raw pixels (0..16), plus the training split's statistics."""

    def __init__(self, split_seed: int):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = digits.data.astype(np.float32)  # (1797, 64), the data set's natural form
        y = digits.target.astype(np.int64)
        idx = np.arange(len(y))
        rest, test = train_test_split(idx, test_size=TEST_FRACTION, stratify=y, random_state=split_seed)
        train, val = train_test_split(rest, test_size=VAL_FRACTION, stratify=y[rest], random_state=split_seed)
        self.split_seed = split_seed
        self.indices = {"train": train, "val": val, "test": test}  # rows of load_digits()
        self.raw = {name: (x[i], y[i]) for name, i in (("train", train), ("val", val), ("test", test))}
        # One channel, so one mean and one std, from the training split only (no peeking at val/test).
        self.mean = float(x[train].mean())
        self.std = float(x[train].std())
        h = hashlib.sha256()
        for i in (train, val, test):
            h.update(x[i].tobytes())
            h.update(y[i].tobytes())
        self.fingerprint = h.hexdigest()[:16]

    def split(self, name: str) -> Split:
        x, y = self.raw[name]
        return Split(torch.from_numpy((x - self.mean) / self.std), torch.from_numpy(y))


def _data(config: dict, reporter: Reporter | None = None) -> DigitsData:
    seed = int(config.get("split_seed", 0))
    if reporter is None:
        return DigitsData(seed)
    return reporter.cached(("digits", seed), lambda: DigitsData(seed))


class Preprocessed(nn.Module):
    """Raw digit pixels (N, 64) in 0..16 -> normalise -> reshape -> net. What the MLflow model serves."""

    def __init__(self, net: nn.Module, mean: float, std: float, shape: tuple[int, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        return self.net(x.reshape(-1, *self.shape))


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
        # The notes: dropout before large fully connected layers, not before the input's convolutions.
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
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4 -> 2x2
        nn.Flatten(),
        nn.Dropout(float(config["dropout"])),
        nn.Linear(c2 * 4, N_CLASSES),
    )  # fmt: skip


# ---- the trainable and its after-search hooks, shared by both pairs ------------------------------------


def _digits_trainable(name: str, build, shape, hyperparameters, defaults, description) -> Trainable:
    all_defaults = {**LOOP_DEFAULTS, **defaults, "split_seed": 0, "train_subset": 0}

    def with_defaults(config: dict) -> dict:
        return {**all_defaults, **config}

    def as_model_input(split: Split) -> Split:
        return Split(split.x.reshape(-1, *shape), split.y)

    def train(config: dict, reporter: Reporter) -> None:
        config = with_defaults(config)
        data = _data(config, reporter)
        train_split = as_model_input(data.split("train"))
        subset = int(config["train_subset"])
        if subset:
            train_split = Split(train_split.x[:subset], train_split.y[:subset])
        fit(config, reporter, build, train_split, as_model_input(data.split("val")))

    def load(config: dict, model_state: dict) -> nn.Module:
        model = build(config)
        model.load_state_dict(model_state)
        return model.eval()

    def evaluate_split(config: dict, model_state: dict, split: str) -> dict[str, float]:
        config = with_defaults(config)
        result = evaluate(load(config, model_state), as_model_input(_data(config).split(split)))
        return {f"{split}_{k}": v for k, v in result.items()}

    def export(config: dict, model_state: dict) -> tuple[nn.Module, np.ndarray]:
        config = with_defaults(config)
        data = _data(config)
        model = Preprocessed(load(config, model_state), data.mean, data.std, shape).eval()
        return model, data.raw["val"][0][:4].copy()

    def setup(config: dict) -> Setup:
        config = with_defaults(config)
        data = _data(config)
        return Setup(
            model=lambda: build(config),
            train=as_model_input(data.split("train")),
            val=as_model_input(data.split("val")),
            loss=nn.functional.cross_entropy,
            optimizer=lambda params, lr: make_optimizer(params, {**config, "lr": lr}),
            n_classes=N_CLASSES,
        )

    def samples(config: dict, split: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        x, y = _data(with_defaults(config)).raw[split]
        return x, y, (8, 8)

    def data_info(config: dict) -> dict[str, Any]:
        data = _data(with_defaults(config))
        return {"dataset": "sklearn-digits", "fingerprint": data.fingerprint, "split_seed": data.split_seed}

    return register(
        Trainable(
            name=name,
            train=train,
            metric="val_accuracy",
            mode="max",
            hyperparameters={
                **LOOP_HYPERPARAMETERS,
                **hyperparameters,
                "split_seed": "seed of the data splits",
                # A learning-curve knob: fewer examples make a task that does not saturate (benchmarks).
                "train_subset": "train on only the first N examples of the (shuffled) training split; 0 = all",
            },
            defaults=all_defaults,
            evaluate=evaluate_split,
            export=export,
            data_info=data_info,
            samples=samples,
            setup=setup,
            description=description,
        )
    )


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
