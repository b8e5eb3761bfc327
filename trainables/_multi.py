"""A multi-input network: an image branch (a small CNN) and a vector branch (a fully connected layer),
concatenated before the head, on scikit-learn's digits. The image is the 8x8 digit; the
vector is its 8 row sums and 8 column sums. Built on the public factory, so a tuple of inputs goes through
training, `check` and the servable model (which takes one raw (N, 64 + 16) array: pixels 0..16, then the sums).
"""

from __future__ import annotations

import torch
from torch import nn

from ._digits_pairs import N_CLASSES, digits_for
from ._factory import from_model
from ._registry import register

HYPERPARAMETERS = {
    "channels": "output channels of the image branch's first conv block (the second has twice as many)",
    "hidden": "units of the vector branch's hidden layer",
    "dropout": "dropout probability before the linear head, 0..1",
}
DEFAULTS = {"channels": 16, "hidden": 32, "dropout": 0.2}


class MultiInput(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        c, h = int(config["channels"]), int(config["hidden"])
        self.cnn = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(16, h), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(float(config["dropout"])), nn.Linear(2 * c * 4 + h, N_CLASSES))

    def forward(self, image: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat((self.cnn(image), self.fc(data)), dim=1))  # the two branches, side by side


class Standardise(nn.Module):
    """Raw inputs -> the network's: each input standardised with the training split's statistics."""

    def __init__(self, image: torch.Tensor, data: torch.Tensor):
        super().__init__()
        self.register_buffer("image_mean", image.mean())
        self.register_buffer("image_std", image.std())
        self.register_buffer("data_mean", data.mean(0))
        self.register_buffer("data_std", data.std(0).clamp(min=1e-6))

    def forward(self, image: torch.Tensor, data: torch.Tensor):
        return (image - self.image_mean) / self.image_std, (data - self.data_mean) / self.data_std


def _splits(config: dict):
    digits = digits_for(config)

    def split(name: str):
        x, y = digits.raw[name]
        image = torch.from_numpy(x).reshape(-1, 1, 8, 8)
        sums = torch.cat((image.sum(3).flatten(1), image.sum(2).flatten(1)), dim=1)  # 8 rows, 8 columns
        return (image, sums), torch.from_numpy(y)

    return split("train"), split("val"), lambda: split("test")


digits_multi_input = register(
    from_model(
        MultiInput,
        _splits,
        name="digits-multi-input",
        hyperparameters=HYPERPARAMETERS,
        defaults=DEFAULTS,
        preprocess=lambda config, inputs: Standardise(*inputs),
        description="a multi-input network: a CNN on the digit and an MLP on its row/column sums",
    )
)
