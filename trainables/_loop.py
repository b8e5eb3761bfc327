"""The course's training loop, once, for every trainable: classification, segmentation, reconstruction.

Per epoch: model.train(), for each batch zero_grad -> forward -> loss -> backward -> optional
clip_grad_norm -> step; then model.eval() and validate. Report every epoch; checkpoint when the study
metric improves; stop early after `patience` epochs without improvement; stop at once on a NaN/inf loss.
On a GPU the data stays there (see _device.py), steps never sync with the host, convolutions run in bf16
and channels_last, and a compiled graph is reused across a worker's trials.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from studies.words import STOP_DIVERGED, STOP_EARLY, better

from . import _device
from ._device import DEVICE_DEFAULTS, DEVICE_HYPERPARAMETERS, Prep, default_device
from ._optim import OPTIM_DEFAULTS, OPTIM_HYPERPARAMETERS, OPTIMIZERS, Schedule, make_optimizer
from ._reporter import Reporter
from ._tasks import Score, loss_fn

__all__ = ["EVAL_BATCH", "OPTIMIZERS", "Prep", "Split", "default_device", "evaluate", "fit", "make_optimizer"]

# Hyperparameters the loop itself reads, with their defaults; each trainable adds its model's own.
LOOP_HYPERPARAMETERS = {
    **OPTIM_HYPERPARAMETERS,
    "batch_size": "examples per optimisation step",
    "clip_grad_norm": "max gradient L2 norm; 0 turns clipping off",
    "label_smoothing": "classification only: share of each target spread over the other classes, 0..1",
    "patience": "epochs without improvement of the study metric before the trial stops itself; 0 = never",
    "epochs": "epochs to train; with ASHA the engine sets it to the study's asha.max_t",
    "precision": DEVICE_HYPERPARAMETERS["precision"],
    "compile": DEVICE_HYPERPARAMETERS["compile"],
}
LOOP_DEFAULTS = {
    **OPTIM_DEFAULTS,
    "batch_size": 64,
    "clip_grad_norm": 0.0,  # off unless asked; the notes clip at 2 for unstable runs
    "label_smoothing": 0.0,
    "patience": 0,  # ASHA already stops weak trials; per-trial patience is opt-in
    "epochs": 10,
    "precision": DEVICE_DEFAULTS["precision"],
    "compile": DEVICE_DEFAULTS["compile"],
}
# Examples per batch when scoring a split: `evaluate`'s, and `trainables.held_score`'s over a model's outputs,
# so that the two sum the same batches in the same order and agree to the last bit.
EVAL_BATCH = 512
# Augmentation switches: only for trainables whose splits hold uint8 images (a `Prep` normalises them).
AUGMENT_HYPERPARAMETERS = {k: DEVICE_HYPERPARAMETERS[k] for k in ("flip", "crop", "jitter")}
AUGMENT_DEFAULTS = {k: DEVICE_DEFAULTS[k] for k in ("flip", "crop", "jitter")}


@dataclasses.dataclass(frozen=True)
class Split:
    x: torch.Tensor  # model-ready float inputs, or uint8 images (N, C, H, W) that a `Prep` normalises
    y: torch.Tensor  # int64 class labels (N,) or masks (N, H, W); unused by reconstruction
    key: Any = None  # names the data (fingerprint, split): a GPU copy is then made once per worker

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device), self.key)

    def resident(self, device: torch.device) -> Split:
        """On `device` (or pinned on the host when it does not fit there); with a key, once per worker."""
        x_key, y_key = ((self.key, "x"), (self.key, "y")) if self.key is not None else (None, None)
        return Split(_device.resident(self.x, device, x_key), _device.resident(self.y, device, y_key), self.key)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    batch_size: int = EVAL_BATCH,
    *,
    task: str = "classification",
    prep: Prep | None = None,
    config: dict | None = None,
    per_class: bool = False,
    loss=None,
    metrics=None,
) -> dict[str, float]:
    """The task's metrics over a split, in eval mode and fp32, on the model's device (a split kept on the host
    is copied there batch by batch; a streamed one comes from its DataLoader workers). Training's validation
    and the after-search revalidation/test both come through here, so their numbers agree. `loss` and
    `metrics` (name -> fn(output, target)): a user's own, in place of the task's loss and beside its metrics."""
    model.eval()
    device = next(model.parameters()).device
    score = Score(task, loss or loss_fn(task, config or {}), device, metrics)
    for x, y in in_order(split, batch_size, device):
        x, y, pixels = prep(x, y) if prep is not None else (x, y, x)
        if _device.channels_last(device, x):
            x = x.contiguous(memory_format=torch.channels_last)
        score.add(model(x), pixels if task == "reconstruction" else y)
    return score.result(per_class)


def in_order(split, batch_size: int, device: torch.device):
    """A split's batches in order, on `device`."""
    if hasattr(split, "feed"):  # a streamed Dataset (trainables._userdata.Stream)
        n = len(split)
        yield from split.feed(device).epoch(torch.arange(n), batch_size, math.ceil(n / batch_size))
        return
    for start in range(0, len(split), batch_size):
        rows = slice(start, start + batch_size)
        yield split.x[rows].to(device, non_blocking=True), split.y[rows].to(device, non_blocking=True)


def fit(
    config: dict,
    reporter: Reporter,
    build_model: Callable[[dict], nn.Module],
    train: Split,
    val: Split,
    device: torch.device | None = None,
    *,
    task: str = "classification",
    prep: Prep | None = None,
    loss=None,
    metrics=None,
) -> None:
    """Train `build_model(config)` on `train`, validating on `val` every epoch, reporting to `reporter`.
    With `prep`, the splits hold uint8 images that it augments (training only) and normalises on the device.
    A split may also be a streamed Dataset (trainables._userdata.Stream): its batches come from DataLoader
    workers and the step is never recorded. `loss`, `metrics`: a user's own (see `evaluate`)."""
    config = {**LOOP_DEFAULTS, **config}
    device = device or default_device()
    metric, mode = reporter.metric, reporter.mode
    user_loss, loss, user_metrics = loss, loss or loss_fn(task, config), metrics
    streamed = hasattr(train, "feed")
    batch_size, clip = int(config["batch_size"]), float(config["clip_grad_norm"])
    patience, epochs = int(config["patience"]), int(config["epochs"])
    compile_mode = _device.compile_mode(config)
    train, val = train.resident(device), val.resident(device)
    nhwc = _device.channels_last(device, train.x)
    # Fixed shapes (a recorded or compiled step) need one full batch; a split smaller than a batch trains
    # eagerly on its one partial batch, as on the CPU.
    full_batch = len(train) >= batch_size
    # The whole step as one CUDA graph: on a GPU, with the data there (a host copy per batch cannot be
    # recorded) and an update the graph can hold.
    graphed = (
        compile_mode != "off"
        and device.type == "cuda"
        and not streamed
        and not _device.on_host(train.x, device)
        and config["optimizer"] in _device.GRAPH_OPTIMIZERS
        and full_batch
    )
    amp = _device.autocast(config, device, cache=not graphed)

    def batch(rows, training: bool):
        """`rows`: indices into the resident split, or a batch (x, y) already fetched to the device."""
        if isinstance(rows, tuple):
            x, y = rows
        else:
            x, y = _device.batch(train.x, rows, device), _device.batch(train.y, rows, device)
        x, y, pixels = prep(x, y, train=training) if prep is not None else (x, y, x)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, pixels if task == "reconstruction" else y

    # The batch a compiled model is warmed up (and an eager epoch timed) on.
    head = train.head(batch_size) if streamed else None
    first = (head.x.to(device), head.y.to(device)) if streamed else None
    torch.manual_seed(reporter.seed)
    model = build_model(config).to(device, memory_format=torch.channels_last if nhwc else torch.preserve_format)
    forward, compile_s = model, 0.0
    # Static shapes for a recorded or compiled step: full batches only (the last partial batch is dropped).
    key = _device.architecture_key(model, device, (batch_size, *train.x.shape[1:]), str(config["precision"]))
    cudagraphs = device.type == "cuda" and not graphed  # then the compiled model brings its own graphs
    if full_batch and (
        compile_mode == "on"
        or (
            compile_mode == "auto"
            and device.type == "cuda"
            and (
                _device.is_compiled(key, cudagraphs)
                or _device.worth_compiling(
                    _eager_epoch_s(model, loss, batch, len(train), batch_size, amp, first),
                    epochs - 1,
                    reporter.trials_per_worker - 1,
                    graphed,
                )
            )
        )
    ):
        model, forward, new = _device.compiled(model, key, cudagraphs)
        if new:
            compile_s = _warm_up(model, forward, loss, batch, len(train), batch_size, amp, cudagraphs, first)
        torch.manual_seed(reporter.seed)  # the same stream of dropout masks, compiled or not
    marks = forward is not model and cudagraphs  # the compiled model's own CUDA graphs want step marks
    static = graphed or forward is not model
    steps = len(train) // batch_size if static else math.ceil(len(train) / batch_size)
    if steps < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the {len(train)} training examples")

    params = list(model.parameters())
    optimizer = make_optimizer(params, config, fused=device.type == "cuda", capturable=graphed)
    schedule = Schedule(optimizer, config, steps, mode)
    shuffle = torch.Generator().manual_seed(reporter.seed + 1)
    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": 0}
    checkpoint = reporter.restore()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        schedule.load_state_dict(checkpoint.get("schedule", {}))
        optimizer.load_state_dict(checkpoint["optimizer"])  # after the schedule: it holds the current lr
        for group in optimizer.param_groups if graphed else ():
            if "capturable" in group:  # as created, whatever the checkpoint's run had
                group["capturable"] = True
        torch.set_rng_state(checkpoint["rng"]["torch"])
        shuffle.set_state(checkpoint["rng"]["shuffle"])
        state = dict(checkpoint["progress"])
        print(f"resuming at epoch {state['epoch'] + 1} from the trial's checkpoint", flush=True)  # in `hpsearch logs`
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # the epoch's, kept on the device

    def train_step(rows) -> None:
        x, target = batch(rows, True)
        optimizer.zero_grad(set_to_none=True)
        with amp:
            if marks:
                torch.compiler.cudagraph_mark_step_begin()
            step_loss = loss(forward(x), target)
        step_loss.backward()
        if clip > 0:
            nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        loss_sum.add_(step_loss.detach().double() * len(x))

    step_fn = _device.StepGraph(train_step, optimizer, batch_size, device) if graphed else train_step
    # A split the GPU has no room for stays on the host; DataLoader workers gather and pin its batches.
    if streamed:
        host = train.feed(device)
    else:
        host = (
            _device.HostBatches(train.x, train.y, device, _loader_workers())
            if _device.on_host(train.x, device)
            else None
        )

    first_epoch = state["epoch"] + 1
    for epoch in range(first_epoch, epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum.zero_()
        order = torch.randperm(len(train), generator=shuffle)
        if host is not None:
            feed = host.epoch(order, batch_size, steps)
        else:
            order = order.to(device)
            feed = (order[step * batch_size : (step + 1) * batch_size] for step in range(steps))
        for rows in feed:
            step_fn(rows)
            schedule.after_step()
        seen = min(len(train), steps * batch_size)
        train_loss = loss_sum.item() / seen  # the epoch's only host sync in training
        seconds = time.perf_counter() - started

        if not math.isfinite(train_loss):
            reporter.report(epoch, {"train_loss": train_loss}, stop=STOP_DIVERGED)
            return
        val_metrics = evaluate(model, val, task=task, prep=prep, config=config, loss=user_loss, metrics=user_metrics)
        metrics = {
            "train_loss": train_loss,
            **{f"val_{k}": v for k, v in val_metrics.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "samples_per_s": seen / seconds,
            "peak_mem_mb": _peak_mem_mb(device),
        }
        if compile_s:  # reported once, with the first epoch after it: the sweep's wall time holds it
            metrics["compile_s"], compile_s = compile_s, 0.0
        if graphed and epoch == first_epoch:
            metrics["step_graph"] = float(step_fn.recorded)  # 1: each step was one CUDA graph replay
            if step_fn.failure:
                warnings.warn(
                    f"the training step could not be recorded as a CUDA graph, so it runs eagerly: {step_fn.failure}",
                    stacklevel=1,
                )
        value = metrics[metric]
        schedule.after_epoch(value)
        state["epoch"] = epoch
        ckpt = None
        if better(value, state["best"], mode):
            state["best"], state["best_epoch"] = value, epoch
            ckpt = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
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


def _train_steps(
    model, forward, loss, batch, n: int, batch_size: int, amp, steps: int, marks: bool = False, first=None
) -> None:
    """Forward and backward on the first batches, without an optimizer step; weights and buffers (BatchNorm
    statistics) are put back afterwards, so the trial starts exactly where it would have."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    idx = first if first is not None else torch.arange(min(n, batch_size))
    for _ in range(steps):
        # Gradients from nothing each time: with CUDA graphs a .grad may be the graph's own output buffer,
        # which the next replay overwrites, so accumulating into it fails.
        model.zero_grad(set_to_none=True)
        x, target = batch(idx, False)
        with amp:
            if marks:
                torch.compiler.cudagraph_mark_step_begin()
            out = loss(forward(x), target)
        out.backward()
    with torch.no_grad():
        model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)


def _eager_epoch_s(model, loss, batch, n: int, batch_size: int, amp, first=None) -> float:
    """An eager epoch's seconds, from timing a few steps after two that warm the kernels up."""
    _train_steps(model, model, loss, batch, n, batch_size, amp, 2, first=first)
    torch.cuda.synchronize()
    started = time.perf_counter()
    _train_steps(model, model, loss, batch, n, batch_size, amp, 3, first=first)
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / 3 * math.ceil(n / batch_size)


def _warm_up(model, forward, loss, batch, n: int, batch_size: int, amp, cudagraphs: bool, first=None) -> float:
    """Compile (and record the model's own CUDA graphs) before the first timed epoch; returns the seconds."""
    started = time.perf_counter()
    _train_steps(model, forward, loss, batch, n, batch_size, amp, 3, marks=cudagraphs, first=first)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _loader_workers() -> int:
    """DataLoader workers for a split kept on the host: up to 4, within the threads this trial was given."""
    return min(4, max(1, torch.get_num_threads()))


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
