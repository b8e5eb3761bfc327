"""Optimizers and learning-rate schedules, from a trial's config.

Each hyperparameter here is read only where it applies: `momentum` by sgd and nesterov, the schedule's own
knobs by that schedule. A study's conditional space (`when:`) keeps the sampler from searching the others.
"""

from __future__ import annotations

import math

import torch

OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("none", "step", "cosine", "warmup_cosine", "plateau")

OPTIM_HYPERPARAMETERS = {
    "lr": "learning rate (step size of the optimizer); the peak rate under a schedule",
    "optimizer": "sgd | nesterov | adam | adamw | rmsprop (sgd with momentum 0 is plain SGD)",
    "momentum": "SGD momentum, 0..1; read by sgd and nesterov only",
    "weight_decay": "L2 penalty (decoupled for adamw)",
    "schedule": "none | step | cosine | warmup_cosine | plateau (learning-rate schedule)",
    "warmup_epochs": "epochs of linear warmup from lr/100 to lr; read by warmup_cosine only",
    "lr_step_epochs": "epochs between decays; read by step only",
    "lr_gamma": "factor the lr is multiplied by at each decay; read by step and plateau",
    "lr_plateau_patience": "epochs without improvement before plateau decays the lr",
}
OPTIM_DEFAULTS = {
    "lr": 1e-3,  # Adam's usual starting point
    "optimizer": "adam",  # Adam/AdamW first: they need the least lr tuning
    "momentum": 0.9,  # SGD's usual momentum
    "weight_decay": 0.0,
    "schedule": "none",
    "warmup_epochs": 1,
    "lr_step_epochs": 10,
    "lr_gamma": 0.1,  # step decay: a tenth at each step, the usual factor
    "lr_plateau_patience": 2,
}


def make_optimizer(params, config: dict, fused: bool = False, capturable: bool = False) -> torch.optim.Optimizer:
    """`fused` (CUDA only) runs the whole update in one kernel per parameter group; `capturable` lets a CUDA
    graph record Adam's and AdamW's update (their step counts stay on the device)."""
    name = config["optimizer"]
    lr, wd = float(config["lr"]), float(config["weight_decay"])
    extra = {"fused": True} if fused else {}
    adam_extra = {**extra, "capturable": True} if capturable else extra
    if name in ("sgd", "nesterov"):
        momentum = float(config["momentum"])
        if name == "nesterov" and momentum <= 0:
            raise ValueError("optimizer nesterov needs momentum > 0")
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=wd, **extra)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **adam_extra)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **adam_extra)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)  # no fused RMSprop in torch
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")


class Schedule:
    """The config's lr schedule. `after_step()` runs after every optimizer step (cosine, warmup), and
    `after_epoch(value)` after every validation (step decay per epoch, plateau on the study metric)."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: dict, steps_per_epoch: int, mode: str):
        name = config.get("schedule", "none")
        if name not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {name!r}")
        self.name = name
        epochs = int(config["epochs"])
        total = max(1, epochs * steps_per_epoch)
        warmup = min(total - 1, int(config.get("warmup_epochs", 1)) * steps_per_epoch) if name == "warmup_cosine" else 0
        self._per_step = None
        self._per_epoch = None
        if name in ("cosine", "warmup_cosine"):

            def factor(step: int) -> float:
                if step < warmup:  # linear from lr/100 up to lr
                    return 0.01 + 0.99 * step / warmup
                progress = min(1.0, (step - warmup) / max(1, total - warmup))
                return 0.5 * (1 + math.cos(math.pi * progress))

            self._per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        elif name == "step":
            self._per_epoch = torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=int(config["lr_step_epochs"]), gamma=float(config["lr_gamma"])
            )
        elif name == "plateau":
            self._per_epoch = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=mode, factor=float(config["lr_gamma"]), patience=int(config["lr_plateau_patience"])
            )

    def after_step(self) -> None:
        if self._per_step is not None:
            self._per_step.step()

    def after_epoch(self, value: float) -> None:
        if isinstance(self._per_epoch, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self._per_epoch.step(value)
        elif self._per_epoch is not None:
            self._per_epoch.step()

    def state_dict(self) -> dict:
        inner = self._per_step or self._per_epoch
        return {} if inner is None else inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        inner = self._per_step or self._per_epoch
        if inner is not None and state:
            inner.load_state_dict(state)
