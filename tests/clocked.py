"""A quadratic like tests.quad that reports, with each epoch, the process it ran in and when it started and
ended (`pid`, `started`, `ended`, seconds since the epoch), for the test that promotion's retrainings run as
Ray tasks in parallel. It raises when the file `fail_file` (a fixed value) exists and names its `x`: a
retraining that fails. Named by import path `tests.clocked:train`."""

import os
import time
from pathlib import Path

import torch


def train(config, reporter):
    started = time.time()
    fail_file = Path(config["fail_file"])
    if fail_file.exists() and repr(config["x"]) in fail_file.read_text().split():
        raise RuntimeError(f"x={config['x']!r} fails on purpose")
    for epoch in range(1, config["epochs"] + 1):
        time.sleep(config.get("sleep", 0.0))
        loss = (config["x"] - 0.3) ** 2 + 1.0 / epoch
        metrics = {"loss": loss, "pid": os.getpid(), "started": started, "ended": time.time()}
        reporter.report(epoch, metrics, checkpoint={"model": {"x": torch.tensor([config["x"]])}, "epoch": epoch})
