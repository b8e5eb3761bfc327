"""What a task trains on and how it is scored: classification, segmentation, reconstruction, regression.

Every metric is accumulated on the device (a confusion matrix, a sum of squared errors) and read once per
evaluation, so validation costs one host sync however many batches it has.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TASKS = ("classification", "segmentation", "reconstruction", "regression")
# A user's own loss and metrics, nothing else scored (trainables.from_model with task=None).
CUSTOM = "custom"
# The metric each task's trainables select on by default, and its mode.
DEFAULT_METRIC = {
    "classification": ("val_accuracy", "max"),
    "segmentation": ("val_iou", "max"),
    "reconstruction": ("val_mse", "min"),
    "regression": ("val_mse", "min"),
}


# What `Score.result` gives besides the loss, per task (a user's own metrics come on top).
TASK_METRICS = {
    "classification": ("accuracy",),
    "segmentation": ("accuracy", "iou", "dice"),
    "reconstruction": ("mse", "psnr"),
    "regression": ("mse", "mae"),
    CUSTOM: (),
}


def loss_fn(task: str, config: dict):
    """(output, target) -> mean loss. Reconstruction targets are the input's pixels on the 0..1 scale."""
    if task == "reconstruction":
        kind = config.get("recon_loss", "mse")
        if kind not in ("mse", "l1"):
            raise ValueError(f"recon_loss must be mse or l1, not {kind!r}")
        return nn.functional.mse_loss if kind == "mse" else nn.functional.l1_loss
    if task == "regression":
        return _shaped(nn.functional.mse_loss)
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    smoothing = float(config.get("label_smoothing", 0.0)) if task == "classification" else 0.0
    return lambda out, y: nn.functional.cross_entropy(out, y, label_smoothing=smoothing)


def _shaped(loss):
    """A regression loss that reads an output of one value per example, (N, 1), against targets (N,): without
    this, broadcasting would silently compare every output with every target."""

    def shaped(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if out.shape != target.shape and out.numel() == target.numel():
            out = out.reshape(target.shape)
        return loss(out, target.to(out.dtype))

    return shaped


class Score:
    """Accumulates one pass over a split. `add()` never syncs; `result()` does, once.

    `metrics`: a user's own, name -> fn(output, target) -> the batch's mean value; averaged over the split."""

    def __init__(self, task: str, loss, device: torch.device, metrics=None):
        self.task, self.loss = task, loss
        self.metrics = dict(metrics or {})
        self.sums = {name: torch.zeros((), dtype=torch.float64, device=device) for name in self.metrics}
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.sq_err = torch.zeros((), dtype=torch.float64, device=device)
        self.abs_err = torch.zeros((), dtype=torch.float64, device=device)
        self.confusion: torch.Tensor | None = None
        self.n = 0  # examples
        self.values = 0  # pixels (reconstruction)

    def add(self, out: torch.Tensor, target: torch.Tensor) -> None:
        out = out.float()
        n = len(out)
        self.n += n
        self.loss_sum += self.loss(out, target).double() * n
        for name, fn in self.metrics.items():
            self.sums[name] += torch.as_tensor(fn(out, target), device=out.device).double() * n
        if self.task == CUSTOM:
            return
        if self.task == "regression":
            if out.shape != target.shape and out.numel() == target.numel():
                out = out.reshape(target.shape)
            err = out - target.to(out.dtype)
            self.sq_err += err.pow(2).sum().double()
            self.abs_err += err.abs().sum().double()
            self.values += target.numel()
            return
        if self.task == "reconstruction":
            self.sq_err += (out - target).pow(2).sum().double()
            self.values += target.numel()
            return
        k = out.shape[1]
        if self.confusion is None:
            self.confusion = torch.zeros(k * k, dtype=torch.int64, device=out.device)
        cells = (target * k + out.argmax(1)).flatten()
        # index_add_, not bincount: on a GPU bincount reads its input's max back to the host, a sync per batch.
        self.confusion.index_add_(0, cells, torch.ones_like(cells))

    def result(self, per_class: bool = False) -> dict[str, float]:
        metrics = {"loss": self.loss_sum.item() / max(1, self.n)}
        metrics.update({name: total.item() / max(1, self.n) for name, total in self.sums.items()})
        if self.task == CUSTOM:
            return metrics
        if self.task == "regression":  # over every output value: multi-output targets count each
            metrics["mse"] = self.sq_err.item() / max(1, self.values)
            metrics["mae"] = self.abs_err.item() / max(1, self.values)
            return metrics
        if self.task == "reconstruction":
            mse = self.sq_err.item() / max(1, self.values)
            metrics["mse"] = mse
            metrics["psnr"] = 10 * math.log10(1 / mse) if mse > 0 else math.inf
            return metrics
        k = int(math.isqrt(self.confusion.numel()))
        cm = self.confusion.view(k, k).double().cpu()  # rows: truth, columns: prediction
        hits, truth, predicted = cm.diag(), cm.sum(1), cm.sum(0)
        metrics["accuracy"] = float(hits.sum() / cm.sum().clamp(min=1))
        if self.task == "segmentation":
            union = truth + predicted - hits
            present = truth + predicted > 0  # a class absent from both truth and prediction is not scored
            metrics["iou"] = float((hits / union.clamp(min=1))[present].mean())
            metrics["dice"] = float((2 * hits / (truth + predicted).clamp(min=1))[present].mean())
        if per_class:
            for c, acc in enumerate((hits / truth.clamp(min=1)).tolist()):
                metrics[f"accuracy_class_{c}"] = acc
        return metrics
