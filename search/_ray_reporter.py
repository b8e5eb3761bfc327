"""The Reporter adapted to Ray Tune: metrics go to tune.report, checkpoints to a directory Ray keeps."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from ray import tune

from trainables import Reporter, get_trainable

CHECKPOINT_FILE = "checkpoint.pt"


class RayReporter(Reporter):
    def __init__(self, metric: str, mode: str, seed: int):
        self.metric, self.mode, self._seed = metric, mode, seed

    @property
    def seed(self) -> int:
        return self._seed

    def _emit(self, metrics, checkpoint):
        if checkpoint is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(checkpoint, Path(tmp) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def restore(self):
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as path:
            return torch.load(Path(path) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def make_trial_function(trainable_ref: str, metric: str, mode: str, threads: int, cwd: str):
    """The function Ray runs per trial. It resolves the trainable inside the worker, so a user's
    `pkg.module:function` is imported from the directory `hpsearch` was started in."""

    def hpsearch_trial(config: dict) -> None:
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        torch.set_num_threads(threads)
        trainable = get_trainable(trainable_ref)
        config = dict(config)
        seed = int(config.pop("seed", 0))  # set per trial by the searcher; not a hyperparameter of the model
        trainable.train(config, RayReporter(metric, mode, seed))

    return hpsearch_trial
