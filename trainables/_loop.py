"""One training loop for every trainable: classification, segmentation, reconstruction.

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
    "clip_grad_norm": 0.0,  # off unless asked; 2 is a common bound for a run whose loss spikes
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
    run = _Training(config, reporter, train, val, device or default_device(), task, prep, loss, metrics)
    run.build(build_model)
    run.prepare()
    for epoch in range(run.first_epoch, run.epochs + 1):
        if run.run_epoch(epoch):
            return


class _Training:
    """One `fit`: what its steps share, set in the order they run: the settings and where the data lives
    (`__init__`), the model, compiled or not (`build`), the optimizer, the schedule and the progress a resumed
    trial had (`prepare`), then one `run_epoch` after another, each trained, validated, reported."""

    def __init__(self, config: dict, reporter: Reporter, train, val, device: torch.device, task, prep, loss, metrics):
        self.config = config = {**LOOP_DEFAULTS, **config}
        self.reporter, self.device, self.task, self.prep = reporter, device, task, prep
        self.user_loss, self.user_metrics = loss, metrics
        self.loss = loss or loss_fn(task, config)
        self.streamed = hasattr(train, "feed")
        self.batch_size, self.clip = int(config["batch_size"]), float(config["clip_grad_norm"])
        self.patience, self.epochs = int(config["patience"]), int(config["epochs"])
        self.compile_mode = _device.compile_mode(config)
        self.train, self.val = train.resident(device), val.resident(device)
        self.nhwc = _device.channels_last(device, self.train.x)
        # Fixed shapes (a recorded or compiled step) need one full batch; a split smaller than a batch trains
        # eagerly on its one partial batch, as on the CPU.
        self.full_batch = len(self.train) >= self.batch_size
        # The whole step as one CUDA graph: on a GPU, with the data there (a host copy per batch cannot be
        # recorded) and an update the graph can hold.
        self.graphed = (
            self.compile_mode != "off"
            and device.type == "cuda"
            and not self.streamed
            and not _device.on_host(self.train.x, device)
            and config["optimizer"] in _device.GRAPH_OPTIMIZERS
            and self.full_batch
        )
        self.amp = _device.autocast(config, device, cache=not self.graphed)
        # The batch a compiled model is warmed up (and an eager epoch timed) on.
        head = self.train.head(self.batch_size) if self.streamed else None
        self.first = (head.x.to(device), head.y.to(device)) if self.streamed else None

    def batch(self, rows, training: bool):
        """`rows`: indices into the resident split, or a batch (x, y) already fetched to the device."""
        if isinstance(rows, tuple):
            x, y = rows
        else:
            x, y = _device.batch(self.train.x, rows, self.device), _device.batch(self.train.y, rows, self.device)
        x, y, pixels = self.prep(x, y, train=training) if self.prep is not None else (x, y, x)
        if self.nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, pixels if self.task == "reconstruction" else y

    def build(self, build_model: Callable[[dict], nn.Module]) -> None:
        """The seeded model, compiled where that pays (`forward` is then the compiled one), and the steps per
        epoch: full batches only for a recorded or compiled step, whose shapes are fixed."""
        device, batch_size = self.device, self.batch_size
        torch.manual_seed(self.reporter.seed)
        memory_format = torch.channels_last if self.nhwc else torch.preserve_format
        self.model = build_model(self.config).to(device, memory_format=memory_format)
        self.forward, self.compile_s = self.model, 0.0
        key = _device.architecture_key(
            self.model, device, (batch_size, *self.train.x.shape[1:]), str(self.config["precision"])
        )
        cudagraphs = device.type == "cuda" and not self.graphed  # then the compiled model brings its own graphs
        if self._compiles(key, cudagraphs):
            self.model, self.forward, new = _device.compiled(self.model, key, cudagraphs)
            if new:
                args = (self.loss, self.batch, len(self.train), batch_size, self.amp, cudagraphs, self.first)
                self.compile_s = _warm_up(self.model, self.forward, *args)
            torch.manual_seed(self.reporter.seed)  # the same stream of dropout masks, compiled or not
        self.marks = self.forward is not self.model and cudagraphs  # the compiled model's graphs want step marks
        static = self.graphed or self.forward is not self.model
        n = len(self.train)
        self.steps = n // batch_size if static else math.ceil(n / batch_size)
        if self.steps < 1:
            raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples")

    def _compiles(self, key, cudagraphs: bool) -> bool:
        """compile on: always; auto: on a GPU, when this architecture is compiled already or timing an eager
        epoch says the compile pays for itself over this trial's epochs and the worker's later trials."""
        mode = self.compile_mode
        if not self.full_batch or mode == "off" or (mode == "auto" and self.device.type != "cuda"):
            return False
        if mode == "on" or _device.is_compiled(key, cudagraphs):
            return True
        epoch_s = _eager_epoch_s(
            self.model, self.loss, self.batch, len(self.train), self.batch_size, self.amp, self.first
        )
        return _device.worth_compiling(epoch_s, self.epochs - 1, self.reporter.trials_per_worker - 1, self.graphed)

    def prepare(self) -> None:
        """The optimizer and schedule, the progress a resumed trial had, and how batches reach the step."""
        device, reporter = self.device, self.reporter
        self.params = list(self.model.parameters())
        self.optimizer = make_optimizer(self.params, self.config, fused=device.type == "cuda", capturable=self.graphed)
        self.schedule = Schedule(self.optimizer, self.config, self.steps, reporter.mode)
        self.shuffle = torch.Generator().manual_seed(reporter.seed + 1)
        self.state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": 0}
        checkpoint = reporter.restore()
        if checkpoint is not None:
            self._resume(checkpoint)
        self.first_epoch = self.state["epoch"] + 1
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # the epoch's, kept on the device
        self.step = (
            _device.StepGraph(self.train_step, self.optimizer, self.batch_size, device)
            if self.graphed
            else self.train_step
        )
        # A split the GPU has no room for stays on the host; DataLoader workers gather and pin its batches.
        if self.streamed:
            self.host = self.train.feed(device)
        elif _device.on_host(self.train.x, device):
            self.host = _device.HostBatches(self.train.x, self.train.y, device, _loader_workers())
        else:
            self.host = None

    def _resume(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.schedule.load_state_dict(checkpoint.get("schedule", {}))
        self.optimizer.load_state_dict(checkpoint["optimizer"])  # after the schedule: it holds the current lr
        for group in self.optimizer.param_groups if self.graphed else ():
            if "capturable" in group:  # as created, whatever the checkpoint's run had
                group["capturable"] = True
        torch.set_rng_state(checkpoint["rng"]["torch"])
        self.shuffle.set_state(checkpoint["rng"]["shuffle"])
        self.state = dict(checkpoint["progress"])
        print(f"resuming at epoch {self.state['epoch'] + 1} from the trial's checkpoint", flush=True)  # `hpsearch logs`

    def train_step(self, rows) -> None:
        x, target = self.batch(rows, True)
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp:
            if self.marks:
                torch.compiler.cudagraph_mark_step_begin()
            step_loss = self.loss(self.forward(x), target)
        step_loss.backward()
        if self.clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.loss_sum.add_(step_loss.detach().double() * len(x))

    def run_epoch(self, epoch: int) -> bool:
        """Train and validate one epoch and report it; True when the trial stops here."""
        started = time.perf_counter()
        self.model.train()
        self.loss_sum.zero_()
        order = torch.randperm(len(self.train), generator=self.shuffle)
        if self.host is not None:
            feed = self.host.epoch(order, self.batch_size, self.steps)
        else:
            order = order.to(self.device)
            feed = (order[step * self.batch_size : (step + 1) * self.batch_size] for step in range(self.steps))
        for rows in feed:
            self.step(rows)
            self.schedule.after_step()
        seen = min(len(self.train), self.steps * self.batch_size)
        train_loss = self.loss_sum.item() / seen  # the epoch's only host sync in training
        seconds = time.perf_counter() - started
        if not math.isfinite(train_loss):
            self.reporter.report(epoch, {"train_loss": train_loss}, stop=STOP_DIVERGED)
            return True
        metrics = self._metrics(epoch, train_loss, seen / seconds)
        value = metrics[self.reporter.metric]
        self.schedule.after_epoch(value)
        self.state["epoch"] = epoch
        ckpt = None
        if better(value, self.state["best"], self.reporter.mode):
            self.state["best"], self.state["best_epoch"] = value, epoch
            ckpt = self._checkpoint(value)
        late = self.patience and epoch - self.state["best_epoch"] >= self.patience and epoch < self.epochs
        stop = STOP_EARLY if late else None
        self.reporter.report(epoch, metrics, checkpoint=ckpt, stop=stop)
        return bool(stop)

    def _metrics(self, epoch: int, train_loss: float, samples_per_s: float) -> dict[str, float]:
        """The epoch's report: the losses, the validation metrics, the lr, the throughput and memory."""
        val_metrics = evaluate(
            self.model,
            self.val,
            task=self.task,
            prep=self.prep,
            config=self.config,
            loss=self.user_loss,
            metrics=self.user_metrics,
        )
        metrics = {
            "train_loss": train_loss,
            **{f"val_{k}": v for k, v in val_metrics.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "samples_per_s": samples_per_s,
            "peak_mem_mb": _peak_mem_mb(self.device),
        }
        if self.compile_s:  # reported once, with the first epoch after it: the sweep's wall time holds it
            metrics["compile_s"], self.compile_s = self.compile_s, 0.0
        if self.graphed and epoch == self.first_epoch:
            metrics["step_graph"] = float(self.step.recorded)  # 1: each step was one CUDA graph replay
            if self.step.failure:
                warnings.warn(
                    f"the training step could not be recorded as a CUDA graph, so it runs eagerly: {self.step.failure}",
                    stacklevel=1,
                )
        return metrics

    def _checkpoint(self, value: float) -> dict[str, Any]:
        """All a resumed trial needs to go on as if never stopped, and what the engine tests and exports."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()},
            "progress": dict(self.state),
            "config": dict(self.config),
            "metric": self.reporter.metric,
            "value": value,
        }


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
