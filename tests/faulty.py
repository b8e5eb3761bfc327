"""Trainables that fail on purpose, by configuration: `tests.faulty:train`."""

import math


def train(config, reporter):
    for epoch in range(1, config["epochs"] + 1):
        if config["fault"] == "raise" and epoch == 2:
            raise ValueError("injected failure in trial code")
        loss = math.nan if config["fault"] == "nan" and epoch == 2 else 1.0 / epoch
        reporter.report(epoch, {"loss": loss})
        if not math.isfinite(loss):
            return
