"""A trainable for the overnight benchmarks: no training, a checkpoint of `payload_kb` kilobytes each time
its loss improves (every epoch), and `sleep` seconds per epoch. Named by import path `benchmarks.ballast:train`."""

import time

import torch


def train(config, reporter):
    payload = torch.zeros(config.get("payload_kb", 256) * 256)  # float32: 4 bytes each
    for epoch in range(1, config["epochs"] + 1):
        time.sleep(config.get("sleep", 0.0))
        loss = (config["x"] - 0.3) ** 2 + 1.0 / epoch
        reporter.report(epoch, {"loss": loss}, checkpoint={"model": {"w": payload}, "epoch": epoch})
