"""A quadratic like tests.quad that reports, with each epoch, the process it ran in and when it started and
ended (`pid`, `started`, `ended`, seconds since the epoch), for the test that promotion's retrainings run as
Ray tasks in parallel. It raises when the file `fail_file` (a fixed value) exists and names its `x`: a
retraining that fails. Where the optional `penalty_file` exists and names its `x`, its loss is 10 higher: a
configuration whose retrainings do worse than its trial did. Named by import path `tests.clocked:train`, and
with the hooks a promoted model needs (evaluate, export) as `tests.clocked:CLOCKED`."""

import os
import time
from pathlib import Path

import torch

from tests.finishing import Distance
from trainables import Trainable

PENALTY = 10.0


def _named(path, x) -> bool:
    return bool(path) and Path(path).exists() and repr(x) in Path(path).read_text().split()


def train(config, reporter):
    started = time.time()
    if _named(config["fail_file"], config["x"]):
        raise RuntimeError(f"x={config['x']!r} fails on purpose")
    penalty = PENALTY if _named(config.get("penalty_file"), config["x"]) else 0.0
    for epoch in range(1, config["epochs"] + 1):
        time.sleep(config.get("sleep", 0.0))
        loss = (config["x"] - 0.3) ** 2 + 1.0 / epoch + penalty
        metrics = {"loss": loss, "pid": os.getpid(), "started": started, "ended": time.time()}
        reporter.report(epoch, metrics, checkpoint={"model": {"x": torch.tensor([config["x"]])}, "epoch": epoch})


def evaluate(config, state, split):
    return {f"{split}_loss": (float(state["x"][0]) - 0.3) ** 2}


def export(config, state):
    import numpy as np

    return Distance(state["x"]), np.zeros((2, 1), dtype=np.float32)


CLOCKED = Trainable(name="clocked", train=train, metric="loss", mode="min", evaluate=evaluate, export=export)
