"""A user's project for the multi-machine tests: a package (`userpkg`) that the cluster's nodes do not have
until Ray ships it. Its trainable says which copy of itself it runs from, so a test can tell the shipped copy
from the project folder. `userpkg.model:train` is the plain function, `userpkg.model:trainable` the same with
`evaluate` and `export` (for promote)."""

import textwrap
from pathlib import Path

USER_MODEL = """
import time

import numpy as np
import torch

from trainables import Trainable


def _loss(x):
    return (x - 0.3) ** 2


def train(config, reporter):
    print(f"userpkg running from {__file__}", flush=True)
    best, start = None, 1
    restored = reporter.restore()
    if restored is not None:
        best, start = restored["loss"], restored["epoch"] + 1
    for epoch in range(start, config["epochs"] + 1):
        time.sleep(config.get("sleep", 0.0))
        loss = _loss(config["x"]) + 1.0 / epoch
        checkpoint = None
        if best is None or loss < best:
            best = loss
            checkpoint = {"model": {"w": torch.tensor([config["x"]])}, "epoch": epoch, "loss": loss}
        reporter.report(epoch, {"loss": loss}, checkpoint=checkpoint)


class Scale(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        return x * self.w


def evaluate(config, state, split):
    return {"loss": _loss(float(state["w"][0]))}


def export(config, state):
    return Scale(state["w"].clone()), np.ones((2, 1), dtype=np.float32)


trainable = Trainable(name="userpkg.model:trainable", train=train, metric="loss", mode="min",
                      evaluate=evaluate, export=export)
"""


def make_project(project: Path) -> Path:
    """Write the package into `project` (created); returns it."""
    (project / "userpkg").mkdir(parents=True)
    (project / "userpkg" / "__init__.py").write_text("")
    (project / "userpkg" / "model.py").write_text(textwrap.dedent(USER_MODEL))
    return project


def study_spec(name: str, trainable: str = "userpkg.model:trainable", **fields) -> dict:
    """A study of the package's trainable: x searched in [-1, 1], no ASHA, one CPU per trial; `fields` add to
    or replace these."""
    return {
        "name": name,
        "trainable": trainable,
        "metric": "loss",
        "mode": "min",
        "space": {"x": {"type": "float", "low": -1.0, "high": 1.0}},
        "asha": "off",
        "resources": {"cpus": 1},
        **fields,
    }
