"""A model's raw outputs on held-out examples, and the study metric computed from such outputs.

`predict` gives the outputs (`Held`); `combine` (trainables._ensemble) mixes several models' outputs; `held_score`
scores the mix with the loop's own `Score`, batch for batch as `evaluate` does, so that one model's held_score is
exactly what `evaluate(config, state, "val")` reports for it. Selecting an ensemble therefore never retrains.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from . import _device
from ._loop import EVAL_BATCH, Prep, in_order
from ._tasks import TASK_METRICS, TASKS, Score, loss_fn


@dataclasses.dataclass(frozen=True)
class Held:
    """Outputs on held-out examples: what `trainables.combine` mixes and `trainables.held_score` scores."""

    outputs: np.ndarray  # float32 (n, ...): logits (classification, segmentation), outputs otherwise
    targets: np.ndarray  # what the score compares with: labels, masks, regression targets, input pixels 0..1
    index: np.ndarray  # int64 (n,): positions in the pooled train+val (a folded config) or in the val split


@torch.no_grad()
def held_out(model: nn.Module, split, index: np.ndarray, task: str, prep: Prep | None) -> Held:
    """`model`'s outputs on `split`, batched, prepared and in eval mode exactly as `evaluate` runs it."""
    model.eval()
    device = next(model.parameters()).device
    outputs, targets = [], []
    for x, y in in_order(split, EVAL_BATCH, device):
        x, y, pixels = prep(x, y) if prep is not None else (x, y, x)
        if _device.channels_last(device, x):
            x = x.contiguous(memory_format=torch.channels_last)
        outputs.append(model(x).float().cpu())
        targets.append((pixels if task == "reconstruction" else y).cpu())
    return Held(torch.cat(outputs).numpy(), torch.cat(targets).numpy(), np.asarray(index, dtype=np.int64).reshape(-1))


def can_score(task: str | None, metric: str) -> bool:
    """Whether `held_score` computes `metric` for `task`: the loop's own metrics of the built-in tasks (not a
    DCGAN's val_fid, a user's own metric or a custom task's)."""
    return task in TASKS and metric.startswith("val_") and metric[4:] in ("loss", *TASK_METRICS[task])


def held_score(
    task: str, metric: str, outputs: np.ndarray, targets: np.ndarray, *, config: dict | None = None
) -> float:
    """The study metric from outputs (one model's, or `combine`d ones) and `Held.targets`, as the loop scores
    it. val_loss is the task's loss as `config` sets it (label_smoothing, recon_loss; their defaults without
    one), not a user's own `loss`."""
    if not can_score(task, metric):
        raise ValueError(f"{metric} cannot be computed from held-out outputs of a {task or 'plain'} trainable")
    score = Score(task, loss_fn(task, config or {}), torch.device("cpu"))
    out = torch.from_numpy(np.ascontiguousarray(outputs, dtype=np.float32))
    target = torch.from_numpy(np.ascontiguousarray(targets))
    for start in range(0, len(out), EVAL_BATCH):
        score.add(out[start : start + EVAL_BATCH], target[start : start + EVAL_BATCH])
    return score.result()[metric[4:]]
