"""S1's regression task: a small MLP on scikit-learn's bundled diabetes data (442 patients, 10 features, a
disease-progression score), written as a user would with `trainables.from_model(..., task="regression")`.
A study names it by import path: `trainable: benchmarks.s1_diabetes:trainable` (from the repository root).

Splits: 20% test, then 20% of the rest for validation, fixed by `split_seed` (the same unstratified splitter
the digits trainables use). The target is standardised with the training split's mean and std, so the
reported MSE is in units of its variance (about 1 - R^2); the inputs are standardised by `preprocess`, which
is part of the served model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainables import from_model
from trainables._loading import three_way

TEST_FRACTION, VAL_FRACTION = 0.2, 0.2  # 89 test, 71 validation and 282 training patients


def data(config: dict):
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True, scaled=False)
    parts = three_way(None, len(y), TEST_FRACTION, VAL_FRACTION, int(config["split_seed"]))
    train_y = y[parts["train"]]
    scaled = (y - train_y.mean()) / train_y.std()  # the training split's statistics only
    return tuple(
        (x[parts[s]].astype(np.float32), scaled[parts[s]].astype(np.float32)) for s in ("train", "val", "test")
    )


class Standardise(nn.Module):
    def __init__(self, train_inputs: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", train_inputs.mean(0))
        self.register_buffer("std", train_inputs.std(0).clamp(min=1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def model(config: dict) -> nn.Module:
    width, layers = int(config["hidden"]), int(config["layers"])
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(10 if i == 0 else width, width), nn.ReLU(), nn.Dropout(float(config["dropout"]))]
    return nn.Sequential(*blocks, nn.Linear(width if layers else 10, 1))


trainable = from_model(
    model,
    data,
    task="regression",
    preprocess=lambda config, train_inputs: Standardise(torch.as_tensor(train_inputs)),
    hyperparameters={
        "hidden": "units in each hidden layer",
        "layers": "hidden layers (0: a linear model)",
        "dropout": "dropout probability after each hidden layer, [0, 1)",
    },
    defaults={"hidden": 64, "layers": 2, "dropout": 0.1},  # a small MLP: 282 training rows
    name="benchmarks.s1_diabetes:trainable",
    description="MLP regression on scikit-learn's diabetes data",
)
