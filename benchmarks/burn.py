"""A trainable that burns CPU: `burn_s` seconds of torch matrix products per epoch, one thread, and writes
the seconds it has spent inside `train` to `log_dir/train_s_<pid>_<x>` before each report, and the wall-clock
time it started to `log_dir/start_<pid>_<x>`. For benchmarks/p2_overhead.py and p2_long.py; `burn` is the same
work for a plain Ray Tune function (p2_long.py's stock arm)."""

import os
import time
from pathlib import Path

import torch


def train(config, reporter):
    started = time.perf_counter()
    # When this trial's training began (wall clock): P2-first is the earliest of these less the command's start.
    (Path(config["log_dir"]) / f"start_{os.getpid()}_{config['x']:.12f}").write_text(repr(time.time()))
    a = torch.randn(256, 256)
    for epoch in range(1, config["epochs"] + 1):
        until = time.perf_counter() + config["burn_s"]
        while time.perf_counter() < until:
            a = torch.tanh(a @ a)
        loss = (config["x"] - 0.3) ** 2 + 1.0 / epoch
        # Written before each report: Ray may end the function at its last one (ASHA's max_t).
        name = f"train_s_{os.getpid()}_{config['x']:.12f}"
        (Path(config["log_dir"]) / name).write_text(str(time.perf_counter() - started))
        reporter.report(epoch, {"loss": loss})


def burn(config, report):
    """The same trial for any reporting function `report(epoch, metrics)`."""

    class Reporter:
        def report(self, epoch, metrics):
            report(epoch, metrics)

    train(config, Reporter())
