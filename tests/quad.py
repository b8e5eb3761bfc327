"""A trainable with no training: a quadratic whose best is x=0.3, for sweeps that test the search
machinery (samplers, conditions, warm starts, budgets) in seconds. Named by import path `tests.quad:train`.
It checkpoints like a real trainable, when its loss improves, and continues from its checkpoint when
resumed; `sleep` (seconds per epoch) makes it slow, and `width` multiplies that sleep: a configuration that
costs more per epoch, for the tests of ASHA on seconds of training."""

import time

import torch


def train(config, reporter):
    penalty = 0.0 if config.get("optimizer", "adam") == "adam" else 0.1 * (1 - config.get("momentum", 0.0))
    best, start = None, 1
    restored = reporter.restore()
    if restored is not None:
        best, start = restored["loss"], restored["epoch"] + 1
    print(f"quad trial {f'resuming at epoch {start}' if restored else 'starting'} with x={config['x']}")
    for epoch in range(start, config["epochs"] + 1):
        time.sleep(config.get("sleep", 0.0) * config.get("width", 1))
        loss = (config["x"] - 0.3) ** 2 + penalty + config.get("n", 0) * 0.01 + 1.0 / epoch
        checkpoint = None
        if best is None or loss < best:
            best = loss
            checkpoint = {"model": {"x": torch.tensor([config["x"]])}, "epoch": epoch, "loss": loss}
        reporter.report(epoch, {"loss": loss}, checkpoint=checkpoint)
