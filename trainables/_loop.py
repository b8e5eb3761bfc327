"""The course's training loop, once, for every classification trainable.

Per epoch: model.train(), for each batch zero_grad -> forward -> loss -> backward -> optional
clip_grad_norm -> step; then model.eval() and validate. Report every epoch; checkpoint when the study
metric improves; stop early after `patience` epochs without improvement; stop at once on a NaN/inf loss.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._reporter import STOP_DIVERGED, STOP_EARLY, Reporter

# Hyperparameters the loop itself reads, with their defaults; each trainable adds its model's own.
LOOP_HYPERPARAMETERS = {
    "lr": "learning rate (step size of the optimizer)",
    "optimizer": "adam | adamw | sgd (sgd uses `momentum`)",
    "momentum": "SGD momentum, 0..1; ignored by adam/adamw",
    "weight_decay": "L2 penalty (decoupled for adamw)",
    "batch_size": "examples per optimisation step",
    "clip_grad_norm": "max gradient L2 norm; 0 turns clipping off",
    "patience": "epochs without improvement of the study metric before the trial stops itself; 0 = never",
    "epochs": "epochs to train; the engine sets it to the study's asha.max_t",
}
LOOP_DEFAULTS = {
    "lr": 1e-3,  # Adam's usual starting point
    "optimizer": "adam",  # the notes: try Adam/AdamW first
    "momentum": 0.9,  # the notes' SGD default
    "weight_decay": 0.0,
    "batch_size": 64,
    "clip_grad_norm": 0.0,  # off unless asked; the notes clip at 2 for unstable runs
    "patience": 0,  # ASHA already stops weak trials; per-trial patience is opt-in
    "epochs": 10,
}
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclasses.dataclass(frozen=True)
class Split:
    x: torch.Tensor  # model-ready inputs (already normalised)
    y: torch.Tensor  # int64 class labels

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(params, config: dict) -> torch.optim.Optimizer:
    name = config["optimizer"]
    lr, wd = float(config["lr"]), float(config["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(config["momentum"]), weight_decay=wd)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 512) -> dict[str, float]:
    """Mean cross-entropy and accuracy over a split, in eval mode. Training's validation and the
    after-search revalidation/test both come through here, so their numbers agree exactly."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.x.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.x.device)
    for start in range(0, len(split), batch_size):
        x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    n = len(split)
    # One host sync per evaluation, not per batch.
    return {"loss": loss_sum.item() / n, "accuracy": correct.item() / n}


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def fit(
    config: dict,
    reporter: Reporter,
    build_model: Callable[[dict], nn.Module],
    train: Split,
    val: Split,
    device: torch.device | None = None,
) -> None:
    """Train `build_model(config)` on `train`, validating on `val` every epoch, reporting to `reporter`."""
    config = {**LOOP_DEFAULTS, **config}
    device = device or default_device()
    metric, mode = reporter.metric, reporter.mode
    torch.manual_seed(reporter.seed)
    model = build_model(config).to(device)
    optimizer = make_optimizer(model.parameters(), config)
    shuffle = torch.Generator().manual_seed(reporter.seed + 1)
    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": 0}

    checkpoint = reporter.restore()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        shuffle.set_state(checkpoint["rng"]["shuffle"])
        state = dict(checkpoint["progress"])

    train, val = train.to(device), val.to(device)
    batch_size, clip = int(config["batch_size"]), float(config["clip_grad_norm"])
    patience, epochs = int(config["patience"]), int(config["epochs"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    for epoch in range(state["epoch"] + 1, epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        order = torch.randperm(len(train), generator=shuffle).to(device)
        for start in range(0, len(train), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(train.x[idx]), train.y[idx])
            loss.backward()
            if clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            loss_sum += loss.detach().double() * len(idx)
        train_loss = loss_sum.item() / len(train)  # the epoch's only host sync in training
        seconds = time.perf_counter() - started

        if not math.isfinite(train_loss):
            reporter.report(epoch, {"train_loss": train_loss}, stop=STOP_DIVERGED)
            return
        val_metrics = evaluate(model, val)
        metrics = {
            "train_loss": train_loss,
            "val_loss": val_metrics["loss"],
            "val_accuracy": val_metrics["accuracy"],
            "samples_per_s": len(train) / seconds,
            "peak_mem_mb": _peak_mem_mb(device),
        }
        value = metrics[metric]
        state["epoch"] = epoch
        ckpt = None
        if _improved(value, state["best"], mode):
            state["best"], state["best_epoch"] = value, epoch
            ckpt = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()},
                "progress": dict(state),
                "config": dict(config),
                "metric": metric,
                "value": value,
            }
        stop = STOP_EARLY if patience and epoch - state["best_epoch"] >= patience and epoch < epochs else None
        reporter.report(epoch, metrics, checkpoint=ckpt, stop=stop)
        if stop:
            return


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
