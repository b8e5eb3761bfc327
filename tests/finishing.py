"""A trainable for tests/test_finish.py: tests/quad.py's quadratic (best at x=0.3) with the hooks a finished study
uses (evaluate, export), and faults a test switches on with files in the folder given as the fixed parameter
`faults`:

- `fail-test`, `fail-export`: the test evaluation or the export raises, once (the file is taken away);
- `block-test`: the test evaluation writes `in-test`, then waits while `block-test` exists (a kill lands there).

`checkpoint_every` (epochs) saves fewer checkpoints than improvements, so a trial resumed after a crash reruns
epochs that MLflow already holds. Named by import path `tests.finishing:QUAD`."""

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests import quad
from trainables import Trainable


class _FewerCheckpoints:
    """A reporter that passes on the checkpoints of epochs 1, 1 + every, 1 + 2 * every, ... only."""

    def __init__(self, reporter, every: int):
        self._reporter, self._every = reporter, every

    def report(self, epoch, metrics, checkpoint=None, **kwargs):
        keep = (epoch - 1) % self._every == 0
        self._reporter.report(epoch, metrics, checkpoint=checkpoint if keep else None, **kwargs)

    def __getattr__(self, name):
        return getattr(self._reporter, name)


def train(config, reporter):
    quad.train(config, _FewerCheckpoints(reporter, int(config.get("checkpoint_every", 1))))


def _fault(path: Path) -> None:
    if path.exists():
        path.unlink()
        raise RuntimeError(f"injected fault ({path.name})")


def evaluate(config, state, split):
    faults = Path(config["faults"])
    if split == "test":
        _fault(faults / "fail-test")
        if (faults / "block-test").exists():
            (faults / "in-test").touch()
            while (faults / "block-test").exists():
                time.sleep(0.1)
    return {f"{split}_loss": (float(state["x"][0]) - 0.3) ** 2}


class Distance(nn.Module):
    """The servable model: the squared distance of each input from the trial's x."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.x = nn.Parameter(x.clone())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return (inputs - self.x) ** 2


def export(config, state):
    _fault(Path(config["faults"]) / "fail-export")
    return Distance(state["x"]), np.zeros((2, 1), dtype=np.float32)


QUAD = Trainable(name="finishing-quad", train=train, metric="loss", mode="min", evaluate=evaluate, export=export)
