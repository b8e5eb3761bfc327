"""A trainable whose data set is broken on purpose, for `hpsearch check`: `tests.broken:trainable`.
Twelve classes in the labels for a ten-way head, and one sample with NaN pixels (a corrupt image)."""

import torch
from torch import nn

from trainables import Setup, Trainable
from trainables._loop import Split


def _setup(config):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=generator)
    x[7] = float("nan")
    y = torch.randint(0, 12, (200,), generator=generator)
    return Setup(
        model=lambda: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)),
        train=Split(x[:150], y[:150]),
        val=Split(x[150:], y[150:]),
        loss=nn.functional.cross_entropy,
        optimizer=lambda params, lr: torch.optim.Adam(params, lr=lr),
        n_classes=12,
    )


def _train(config, reporter):
    raise RuntimeError("not for sweeping")


trainable = Trainable(name="broken", train=_train, metric="val_accuracy", mode="max", setup=_setup)
