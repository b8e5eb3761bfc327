"""Trainables that fail on purpose, by configuration: `tests.faulty:train`."""

import math
import os
from pathlib import Path

import torch


def train(config, reporter):
    print(f"faulty trial with fault={config['fault']}")
    start = 1
    checkpoint = reporter.restore()
    if checkpoint is not None:
        start = int(checkpoint["epoch"]) + 1
    for epoch in range(start, config["epochs"] + 1):
        if config["fault"] == "oom_if_big" and config["batch_size"] > 16:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory at batch size {config['batch_size']}")
        if epoch == 2:
            if config["fault"] == "raise":
                raise ValueError("injected failure in trial code")
            if config["fault"] == "die":
                os._exit(3)  # the worker process itself dies, as a segfault or the kernel's OOM killer would
            if config["fault"] == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if config["fault"] == "real_oom":  # a real allocation far beyond any GPU (GPU tests only)
                torch.empty(2**44, dtype=torch.uint8, device="cuda")
            marker = Path(config["marker_dir"]) / "flaky-failed-once"
            if config["fault"] == "flaky" and not marker.exists():
                marker.write_text("1")
                raise RuntimeError("flaky failure, first attempt only")
        if config["fault"].startswith("gpu"):  # real work on the GPU, next to a trial that runs out of memory
            a = torch.randn(1024, 1024, device="cuda")
            for _ in range(50):
                a = torch.tanh(a @ a)
            torch.cuda.synchronize()
        loss = math.nan if config["fault"] == "nan" and epoch == 2 else 1.0 / epoch
        reporter.report(epoch, {"loss": loss}, checkpoint={"epoch": epoch, "model": {"w": torch.zeros(1)}})
        if not math.isfinite(loss):
            return
