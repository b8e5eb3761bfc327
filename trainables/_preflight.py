"""`hpsearch check`: the checks worth a minute before a long run, on one configuration of a study.

Data sanity, the shape after each major layer, overfitting one batch, the LR range test (1e-6, x10 until
the loss diverges) and a time estimate. Model-agnostic: a trainable opts in with a `setup(config)` hook
that returns a `Setup` (a fresh model, the train and val splits, the loss and the optimizer factory).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from ._loop import Split

PASS, WARN, FAIL = "ok", "warn", "FAIL"
OVERFIT_STEPS = 300  # the bound on steps for one-batch overfitting
OVERFIT_BATCH = 32
OVERFIT_TARGET = 0.05  # "near zero": a loss below this (or below 2% of where it started)
LR_STEPS = 30  # steps per learning rate in the range test
LR_START, LR_STOP = 1e-6, 10.0
DIVERGED = 3.0  # a loss this many times its starting loss (or non-finite, or 2x a smaller lr's) has diverged
SKEW = 0.05  # a class share differing this much between splits is flagged


@dataclasses.dataclass
class Setup:
    model: Callable[[], nn.Module]  # a fresh, seeded model
    train: Split
    val: Split
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: Callable[[object, float], torch.optim.Optimizer]  # (params, lr) -> optimizer of the config
    n_classes: int | None = None  # the classes the data set says there are (None: not classification)
    raw_problems: list[str] = dataclasses.field(default_factory=list)  # unreadable/corrupt samples found


@dataclasses.dataclass
class Check:
    name: str
    status: str
    lines: list[str]


def data_sanity(setup: Setup, model: nn.Module) -> Check:
    lines, status = [], PASS
    for name, split in (("train", setup.train), ("val", setup.val)):
        x = split.x.float()
        finite = torch.isfinite(x).all(dim=tuple(range(1, x.dim()))) if x.dim() > 1 else torch.isfinite(x)
        lines.append(
            f"{name}: x {tuple(split.x.shape)} {str(split.x.dtype).removeprefix('torch.')}, "
            f"y {tuple(split.y.shape)} {str(split.y.dtype).removeprefix('torch.')}; "
            f"mean {x.mean():.3f} std {x.std():.3f}"
        )
        bad = int((~finite).sum())
        if bad:
            status = FAIL
            lines.append(f"{name}: {bad} samples with NaN or inf values")
    for problem in setup.raw_problems:
        status = FAIL
        lines.append(problem)
    if setup.n_classes:
        shares = {
            n: torch.bincount(s.y, minlength=setup.n_classes).float() / len(s)
            for n, s in (("train", setup.train), ("val", setup.val))
        }
        lines.append(
            "labels: "
            + ", ".join(f"{n} " + " ".join(f"{v:.2f}" for v in share.tolist()) for n, share in shares.items())
        )
        skew = float((shares["train"] - shares["val"]).abs().max())
        if skew > SKEW:
            status = WARN if status == PASS else status
            lines.append(f"class shares differ by up to {skew:.2f} between train and val (stratify the split)")
        seen = int(max(setup.train.y.max(), setup.val.y.max())) + 1
        with torch.no_grad():
            outputs = model.eval()(setup.train.x[:2]).shape[-1]
        if outputs != setup.n_classes or seen > setup.n_classes:
            status = FAIL
            lines.append(
                f"the model's head has {outputs} outputs but the data has {setup.n_classes} classes "
                f"(labels up to {seen - 1})"
            )
        else:
            lines.append(f"head: {outputs} outputs for {setup.n_classes} classes")
    return Check("data", status, lines)


def layer_shapes(model: nn.Module, x: torch.Tensor) -> Check:
    """The output shape of each top-level layer (one level down inside containers), for one batch."""
    lines, hooks = [f"input {tuple(x.shape)}"], []
    layers = [(n, m) for n, m in model.named_modules() if n and n.count(".") <= 1 and not list(m.children())]
    if not layers:
        layers = list(model.named_children())
    for name, module in layers:
        hooks.append(
            module.register_forward_hook(
                lambda m, inp, out, name=name: (
                    lines.append(f"{name} ({type(m).__name__}): {tuple(out.shape)}")
                    if isinstance(out, torch.Tensor)
                    else None
                )
            )
        )
    try:
        with torch.no_grad():
            out = model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
    lines.append(f"output {tuple(out.shape)}")
    return Check("shapes", PASS, lines)


def overfit_one_batch(setup: Setup, lr: float) -> Check:
    torch.manual_seed(0)
    model = setup.model().train()
    x, y = setup.train.x[:OVERFIT_BATCH], setup.train.y[:OVERFIT_BATCH]
    optimizer = setup.optimizer(model.parameters(), lr)
    first = last = None
    for step in range(1, OVERFIT_STEPS + 1):
        optimizer.zero_grad()
        loss = setup.loss(model(x), y)
        loss.backward()
        optimizer.step()
        last = loss.item()
        first = last if first is None else first
        if not math.isfinite(last):
            break
        if last < OVERFIT_TARGET or last < 0.02 * first:
            return Check(
                "overfit one batch",
                PASS,
                [f"loss {first:.3f} -> {last:.4f} in {step} steps on {len(y)} examples (lr {lr:g})"],
            )
    return Check(
        "overfit one batch",
        FAIL,
        [
            f"loss {first:.3f} -> {last:.4f} after {OVERFIT_STEPS} steps on {len(y)} examples (lr {lr:g}): "
            "it cannot memorise one batch",
            "likely: a learning rate too low (or 0) or too high; frozen parameters; labels that do not match the "
            "inputs; a loss or head that does not fit the task; a model too small",
        ],
    )


def lr_range(setup: Setup, batch_size: int, spec_range: tuple[float, float] | None) -> tuple[Check, float]:
    """The learning-rate range test: from 1e-6, x10 until the loss diverges. Returns the check and the seconds one
    training step took (for the estimate)."""
    results, seconds, steps = [], 0.0, 0
    lr = LR_START
    while lr <= LR_STOP * 1.0001:
        torch.manual_seed(0)
        model = setup.model().train()
        optimizer = setup.optimizer(model.parameters(), lr)
        generator = torch.Generator().manual_seed(0)
        start, losses = time.perf_counter(), []
        for _ in range(LR_STEPS):
            idx = torch.randint(len(setup.train), (batch_size,), generator=generator)
            optimizer.zero_grad()
            loss = setup.loss(model(setup.train.x[idx]), setup.train.y[idx])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        seconds, steps = seconds + time.perf_counter() - start, steps + LR_STEPS
        final = losses[-1]
        best = min((loss for _, loss, d in results if not d), default=None)
        # Diverged: non-finite, blown up from where it started, or far worse than a smaller lr reached.
        diverged = not math.isfinite(final) or final > DIVERGED * losses[0] or (best is not None and final > 2 * best)
        results.append((lr, final, diverged))
        if diverged:
            break
        lr *= 10
    fine = [(lr, loss) for lr, loss, diverged in results if not diverged]
    lines = ["lr " + "  ".join(f"{lr:g}: {'diverged' if d else f'{loss:.3f}'}" for lr, loss, d in results)]
    if not fine:
        return Check("lr range", FAIL, lines + ["the loss diverges even at 1e-6"]), seconds / steps
    best_lr = min(fine, key=lambda p: p[1])[0]
    high = fine[-1][0]
    low = best_lr / 10
    lines.append(
        f"suggested lr range: {low:g} .. {high:g} (lowest loss at {best_lr:g}; the last before divergence {high:g})"
    )
    status = PASS
    if spec_range is not None:
        lo, hi = spec_range
        overlap = max(0.0, math.log10(min(hi, high)) - math.log10(max(lo, low)))
        width = max(math.log10(hi) - math.log10(lo), 1e-9)
        lines.append(f"the study searches lr {lo:g} .. {hi:g}")
        if overlap / width < 0.25:
            status = WARN
            lines.append("the study's lr range barely overlaps the suggested one: consider moving it")
    return Check("lr range", status, lines), seconds / steps
