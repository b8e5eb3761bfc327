"""A GPU benchmark trainable: the course's residual ConvNet (channels_l0 32, 3 blocks, GroupNorm(1, C): about
1.2M parameters) on synthetic 32x32x3 images, trained through hpsearch's own loop (`trainables._loop.fit`).

The images are a class template plus noise, so accuracy climbs; they are made once per worker process. Each
trial writes its own training seconds (time inside `train`, less the one-off compilation) to
`log_dir/train_s_<pid>_<trial seed>` before each report, for benchmarks/p2_overhead.py and p3_packing.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from trainables import Reporter
from trainables._families import build_model
from trainables._loop import Prep, Split, fit

ARCH = {"channels_l0": 32, "n_blocks": 3, "norm": "layer"}
SHAPE = (3, 32, 32)
CLASSES = 10
_DATA: dict = {}


def images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 images (n, 3, 32, 32) and their int64 labels: a per-class template plus noise."""
    if (n, seed) not in _DATA:
        g = torch.Generator().manual_seed(seed)
        templates = torch.rand(CLASSES, *SHAPE, generator=g)
        y = torch.randint(0, CLASSES, (n,), generator=g)
        x = 0.5 * templates[y] + 0.5 * torch.rand(n, *SHAPE, generator=g)
        _DATA[(n, seed)] = ((x * 255).to(torch.uint8), y)
    return _DATA[(n, seed)]


def model(config: dict) -> torch.nn.Module:
    return build_model("resnet", {**ARCH, **{k: config[k] for k in ARCH if k in config}}, SHAPE, CLASSES)


class _Timed(Reporter):
    """Passes everything through. Before each report it writes the trial's training seconds so far (since the
    data was ready, less compilation) to `train_s_*`, and appends the epoch's end time and images/s to
    `epochs_*.jsonl` (for P3's aggregate throughput)."""

    def __init__(self, inner: Reporter, log_dir: Path, n_train: int):
        self.inner, self.n_train, self.started = inner, n_train, time.perf_counter()
        self.metric, self.mode, self.trials_per_worker = inner.metric, inner.mode, inner.trials_per_worker
        name = f"{os.getpid()}_{inner.seed}"
        self.seconds_file, self.epochs_file = log_dir / f"train_s_{name}", log_dir / f"epochs_{name}.jsonl"
        self.compile_s = 0.0

    @property
    def seed(self) -> int:
        return self.inner.seed

    def restore(self):
        return self.inner.restore()

    def _emit(self, metrics, checkpoint):
        self.compile_s += metrics.get("compile_s", 0.0)
        self.seconds_file.write_text(str(time.perf_counter() - self.started - self.compile_s))
        with open(self.epochs_file, "a") as f:
            f.write(
                json.dumps(
                    {
                        "t": time.time(),
                        "images": self.n_train,
                        "samples_per_s": metrics["samples_per_s"],
                        "epoch": metrics["epoch"],
                    }
                )
                + "\n"
            )
        self.inner._emit(metrics, checkpoint)


def train(config: dict, reporter: Reporter) -> None:
    n = int(config.get("n_train", 20_000))
    x, y = images(n + 2_000)
    train_split = Split(x[:n], y[:n], key=("synth", n, "train"))
    val_split = Split(x[n:], y[n:], key=("synth", n, "val"))
    prep = Prep(mean=(0.5,) * 3, std=(0.25,) * 3, flip=bool(config.get("flip", True)), crop=int(config.get("crop", 4)))
    if config.get("log_dir"):
        reporter = _Timed(reporter, Path(config["log_dir"]), n)
    fit(config, reporter, model, train_split, val_split, prep=prep)
