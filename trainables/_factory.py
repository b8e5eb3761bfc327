"""`from_model`: a user's model and data made into a `Trainable` with every hook the built-ins have.

The user writes `model(config) -> nn.Module` and `data(config) -> (train, val, test)`; the factory gives
training on the same loop as the built-ins (`_loop.fit`: resident data and a recorded step on a GPU,
schedules, clipping, patience, precision, compile, resume from `reporter.restore()`), the one test
evaluation, a servable model that takes raw inputs, the report's samples and `hpsearch check`'s setup.

`from_model` checks its arguments and settles the objective; `_Hooks` holds what every hook shares (the
user's functions, the task, the config keys `data` read) and has one method per hook; `WorkerData`
(trainables._workerdata) is one worker's splits for one data configuration; `Served` is what `export` gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ._folds import fold_of, plan, pool, unfolded
from ._held import Held, held_out
from ._loop import (
    AUGMENT_DEFAULTS,
    AUGMENT_HYPERPARAMETERS,
    LOOP_DEFAULTS,
    LOOP_HYPERPARAMETERS,
    Prep,
    Split,
    default_device,
    evaluate,
    fit,
    make_optimizer,
)
from ._preflight import Setup
from ._registry import Trainable
from ._reporter import _WORKER_CACHE, MemoryReporter, Reporter
from ._tasks import CUSTOM, DEFAULT_METRIC, TASK_METRICS, TASKS, loss_fn
from ._userdata import Layout
from ._workerdata import ReadKeys, WorkerData

# A Dataset estimated at most this many MiB is read once per worker into tensors (then resident on a GPU
# where it fits); a larger one streams through DataLoader workers every epoch.
MATERIALISE_MB = 1024
# Metrics where larger is better; any other (loss, mse, mae, psnr's inverse...) is minimised.
_MAXIMISED = ("accuracy", "iou", "dice", "psnr")
_ANY = MemoryReporter()  # the hooks run outside a trial: they share the worker's cache through it
ImageStats = tuple[tuple[float, ...], tuple[float, ...]]  # per-channel mean and std on the 0..1 scale


class _Unpack:
    """The forward pre-hook that hands a multi-input model its inputs (and applies a user's preprocessing)."""

    def __init__(self, layout: Layout | None, preprocess: nn.Module | None):
        self.layout, self.preprocess = layout, preprocess

    def __call__(self, module, args):
        return _model_inputs(args[0], self.layout, self.preprocess)


class Served(nn.Module):
    """Raw inputs -> the user's network: the packed inputs unpacked, uint8 images normalised, a user's
    preprocessing applied. What `export` gives MLflow (and `promote` registers)."""

    def __init__(
        self,
        net: nn.Module,
        layout: Layout | None = None,
        preprocess: nn.Module | None = None,
        image_stats: ImageStats | None = None,
    ):
        super().__init__()
        self.net, self.layout, self.preprocess = net, layout, preprocess
        self.images = image_stats is not None
        if self.images:
            self.register_buffer("mean", torch.tensor(image_stats[0], dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(image_stats[1], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.images:
            return self.net((x.float() / 255 - self.mean) / self.std)
        return self.net(*_model_inputs(x, self.layout, self.preprocess))


def _model_inputs(x: torch.Tensor, layout: Layout | None, preprocess: nn.Module | None) -> tuple[torch.Tensor, ...]:
    """The packed inputs unpacked (one tensor: itself) and preprocessed: the model's positional arguments."""
    inputs = layout.unpack(x) if layout is not None else (x,)
    if preprocess is not None:
        inputs = preprocess(*inputs)
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    return inputs


@dataclasses.dataclass(eq=False)  # hooks compare and hash by identity, as the closures they replace did
class _Hooks:
    """The hooks of one `from_model` trainable, and what they share: the user's functions and task, and the
    config keys `data(config)` has read, one tuple per data configuration seen (they key the worker's cache).
    Each hook completes the config with `defaults` first, as the engine may hand over a partial one."""

    model: Callable[[dict], nn.Module]
    data: Callable[[dict], Any]
    task: str
    name: str
    defaults: dict[str, Any]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    metrics: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None
    preprocess: Callable[[dict, Any], nn.Module] | None
    image_stats: Callable[[dict], ImageStats] | None
    materialise_mb: float
    keysets: list[tuple[str, ...]] = dataclasses.field(default_factory=list)

    # ---- the data, once per worker and data configuration ----

    def with_defaults(self, config: dict) -> dict:
        return {**self.defaults, **config}

    def _cache_key(self, config: dict, keys: tuple[str, ...]):
        return ("trainables.from_model", self.name, keys, tuple(repr(config.get(k)) for k in keys))

    def splits(self, config: dict, reporter: Reporter | None = None) -> WorkerData:
        """The worker's data for this config: built by the first trial that asks, reused by the later ones."""
        if fold_of(config) is not None:  # the user's splits' data, then the fold of it, both kept per worker
            (i, k), seed, d = fold_of(config), int(config["split_seed"]), self.splits(unfolded(config), reporter)
            return (reporter or _ANY).cached((d.cache_key, "fold", i, k, seed), lambda: d.fold(i, k, seed))
        for keys in self.keysets:
            if self._cache_key(config, keys) in _WORKER_CACHE:
                return _WORKER_CACHE[self._cache_key(config, keys)]
        reads = ReadKeys(config)
        built = WorkerData(self.data(reads), self.task, self.materialise_mb)
        keys = tuple(sorted(reads.read))
        built.key(self._cache_key(config, keys))
        if keys not in self.keysets:
            self.keysets.append(keys)
        return (reporter or _ANY).cached(self._cache_key(config, keys), lambda: built)

    # ---- what the model sees: normalisation and augmentation, or the user's preprocessing ----

    def stats(self, config: dict, d: WorkerData) -> ImageStats:
        given = self.image_stats(config) if self.image_stats is not None else None
        return given if given is not None else d.stats

    def prep(self, config: dict, d: WorkerData) -> Prep | None:
        """uint8 images only: normalised with `stats` and augmented by the config's flip, crop and jitter."""
        if not d.images:
            return None
        return Prep(*self.stats(config, d), bool(config["flip"]), int(config["crop"]), float(config["jitter"]))

    def preprocessing(self, config: dict, d: WorkerData) -> nn.Module | None:
        if self.preprocess is None or d.images:
            return None
        head = d.head("train")
        module = self.preprocess(config, d.layout.unpack(head.x) if d.layout is not None else head.x)
        return module.eval() if isinstance(module, nn.Module) else module

    # ---- the model ----

    def build(self, config: dict, d: WorkerData, device: torch.device, hook: bool = True) -> nn.Module:
        """The user's network; with `hook`, taking the packed inputs (and preprocessing them) as the loop
        feeds them. `export` builds it without, as `Served` unpacks and preprocesses."""
        net = self.model(config)
        if not isinstance(net, nn.Module):
            raise TypeError(f"model(config) must return a torch.nn.Module, not {type(net).__name__}")
        pre = self.preprocessing(config, d) if hook else None
        if hook and (d.layout is not None or pre is not None):
            net.register_forward_pre_hook(_Unpack(d.layout, pre.to(device) if pre is not None else None))
        return net

    def load(self, config: dict, state: dict, d: WorkerData, device: torch.device) -> nn.Module:
        net = self.build(config, d, device)
        net.load_state_dict(state)
        return net.to(device).eval()

    # ---- the hooks the engine calls ----

    def train(self, config: dict, reporter: Reporter) -> None:
        config = self.with_defaults(config)
        d, device = self.splits(config, reporter), default_device()
        fit(
            config,
            reporter,
            lambda c: self.build(c, d, device),
            d.train,
            d.val,
            device,
            task=self.task,
            prep=self.prep(config, d),
            loss=self.loss,
            metrics=self.metrics,
        )

    def evaluate(self, config: dict, state: dict, split: str) -> dict[str, float]:
        config = self.with_defaults(config)
        d, device = self.splits(config), default_device()
        result = evaluate(
            self.load(config, state, d, device),
            d.split(split),
            task=self.task,
            prep=self.prep(config, d),
            config=config,
            per_class=self.task == "classification",
            loss=self.loss,
            metrics=self.metrics,
        )
        return {f"{split}_{k}": v for k, v in result.items()}

    def export(self, config: dict, state: dict) -> tuple[nn.Module, np.ndarray]:
        """The servable model (raw inputs in) on the CPU, and four validation inputs as its example."""
        config = self.with_defaults(config)
        d = self.splits(config)
        net = self.build(config, d, torch.device("cpu"), hook=False)
        net.load_state_dict(state)
        stats = self.stats(config, d) if d.images else None
        served = Served(net.eval(), d.layout, self.preprocessing(config, d), stats)
        return served.eval(), d.head("val").x[:4].numpy().copy()

    def predict(self, config: dict, state: dict, split: str = "val") -> Held:
        config = self.with_defaults(config)
        d, device = self.splits(config), default_device()
        data = d.split(split)  # "test": only an ensemble's one test evaluation asks
        index = d.val_index if split == "val" and d.val_index is not None else np.arange(len(data))
        return held_out(self.load(config, state, d, device), data, index, self.task, self.prep(config, d))

    def samples(self, config: dict, split: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...] | None]:
        head = self.splits(self.with_defaults(config)).head(split)
        x = head.x
        # The report draws grayscale images, (N, 1, H, W) or (N, H, W) when both sides are image-like, and
        # colour ones, (N, 3, H, W).
        shape = (
            tuple(x.shape[2:])
            if x.dim() == 4 and x.shape[1] == 1
            else tuple(x.shape[1:])
            if x.dim() == 4 and x.shape[1] == 3 or x.dim() == 3 and min(x.shape[1:]) >= 8
            else None
        )
        return x.numpy(), head.y.numpy(), shape

    def setup(self, config: dict) -> Setup:
        """`hpsearch check`'s view: the first examples of train and val as the model sees them."""
        config = self.with_defaults(config)
        d = self.splits(config)
        p = self.prep(config, d)
        train_split, val_split = (self._ready(d, p, name) for name in ("train", "val"))
        classes = None
        if self.task == "classification":
            classes = int(max(train_split.y.max(), val_split.y.max())) + 1
        return Setup(
            model=lambda: self.build(config, d, torch.device("cpu")),
            train=train_split,
            val=val_split,
            loss=self.loss if self.loss is not None else loss_fn(self.task, config),
            optimizer=lambda params, lr: make_optimizer(params, {**config, "lr": lr}),
            n_classes=classes,
        )

    def _ready(self, d: WorkerData, p: Prep | None, name: str) -> Split:
        head = d.head(name)
        if p is None:
            return head
        x, y, pixels = p(head.x, head.y)
        return Split(x, pixels if self.task == "reconstruction" else y)

    def data_info(self, config: dict) -> dict[str, Any]:
        config = self.with_defaults(unfolded(config))  # the data's, whichever fold a config trains on
        return {
            "dataset": self.name,
            "fingerprint": self.splits(config).fingerprint,
            "split_seed": config["split_seed"],
        }

    def folds(self, config: dict, k: int) -> dict[str, Any]:
        config = self.with_defaults(config)
        d, seed = self.splits(config), int(config["split_seed"])
        return plan(pool(d.train, d.val, self.task, k, seed), k, seed)

    # ---- the trainable ----

    def trainable(
        self, metric: str, mode: str, hyperparameters: Mapping[str, str] | None, description: str
    ) -> Trainable:
        """These hooks as a `Trainable`, the loop's hyperparameters beside the user's own."""
        return Trainable(
            name=self.name,
            train=self.train,
            metric=metric,
            mode=mode,
            hyperparameters={
                **LOOP_HYPERPARAMETERS,
                **{k: f"uint8 image inputs only: {v}" for k, v in AUGMENT_HYPERPARAMETERS.items()},
                "split_seed": "seed of the data splits, for a data(config) that draws them",
                **dict(hyperparameters or {}),
            },
            defaults=self.defaults,
            evaluate=self.evaluate,
            export=self.export,
            data_info=self.data_info,
            samples=self.samples if self.task == "classification" else None,
            setup=self.setup,
            description=description or (self.model.__doc__ or "").strip().split("\n")[0],
            code=self.model,
            task=self.task,
            can_fold=True,
            predict=self.predict,
            folds=self.folds,
            # What the loop reports each epoch (trainables._loop.fit): the losses, the task's and your metrics on
            # the validation split, the learning rate and the throughput.
            reports=(
                "train_loss",
                *(f"val_{k}" for k in ("loss", *TASK_METRICS[self.task], *(self.metrics or {}))),
                "lr",
                "samples_per_s",
                "peak_mem_mb",
            ),
        )


def from_model(
    model: Callable[[dict], nn.Module],
    data: Callable[[dict], Any],
    *,
    task: str | None = "classification",
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    metrics: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None,
    metric: str | None = None,
    mode: str | None = None,
    preprocess: Callable[[dict, Any], nn.Module] | None = None,
    hyperparameters: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    name: str | None = None,
    description: str = "",
    materialise_mb: float = MATERIALISE_MB,
    image_stats: Callable[[dict], tuple[tuple[float, ...], tuple[float, ...]]] | None = None,
) -> Trainable:
    """A `Trainable` for your own model and data. Name it in a study by import path (`my_module:trainable`).

    model(config) -> nn.Module; it takes the inputs (several, for a tuple of inputs) and returns the outputs.
    data(config) -> (train, val, test); each (inputs, targets) as tensors or numpy arrays, inputs optionally
        a tuple of them (a multi-input model), or a map-style Dataset of (inputs, target) items, or a function
        of no arguments returning one (called only when that split is needed: the test split, by the test).
        It is called once per worker and data configuration: the config keys it reads key its cache.
    task: classification (int64 labels; val_accuracy, max), regression (float targets, one or several
        outputs; val_mse and val_mae, min), segmentation (int64 masks; val_iou, max), reconstruction
        (targets unused; val_mse, min), or None for your own `loss` and `metrics` only.
    loss: fn(outputs, targets) -> the batch's mean loss, in place of the task's.
    metrics: name -> fn(outputs, targets) -> the batch's mean value, reported as val_NAME.
    metric, mode: the study's default objective (the task's otherwise).
    preprocess: fn(config, train_inputs) -> nn.Module mapping raw inputs to the model's; it runs inside
        training and is baked into the exported model, so that it serves raw inputs. uint8 images (N, C, H, W)
        need none: they are normalised with the training split's statistics and augmented (flip/crop/jitter).
    hyperparameters, defaults: your own, beside the loop's (name -> what it is and its unit).
    materialise_mb: a Dataset estimated at most this large is read once into tensors; 0 always streams.
    image_stats: fn(config) -> (mean, std) per channel on the 0..1 scale, for uint8 images, in place of the
        training split's (ImageNet's, for pretrained weights); None: the training split's (a fold's, folded).
    """
    task = task or CUSTOM
    metric, mode = _objective(task, loss, metrics, metric, mode)
    hooks = _Hooks(
        model=model,
        data=data,
        task=task,
        name=name or f"{model.__module__}:{model.__qualname__}",
        defaults={**LOOP_DEFAULTS, **AUGMENT_DEFAULTS, "split_seed": 0, **dict(defaults or {})},
        loss=loss,
        metrics=metrics,
        preprocess=preprocess,
        image_stats=image_stats,
        materialise_mb=materialise_mb,
    )
    return hooks.trainable(metric, mode, hyperparameters, description)


def _objective(task: str, loss, metrics, metric: str | None, mode: str | None) -> tuple[str, str]:
    """The study's default metric and mode: the ones given, else the task's (your first metric, for task=None);
    the mode of a metric given alone follows its name. Raises ValueError on a task, loss or mode that cannot be."""
    if task != CUSTOM and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)} or None (your own loss), not {task!r}")
    if task == CUSTOM and loss is None:
        raise ValueError("task=None needs a loss of your own: loss=fn(outputs, targets)")
    if metric is None:
        metric, mode = (
            (f"val_{next(iter(metrics))}", mode)
            if task == CUSTOM and metrics
            else DEFAULT_METRIC.get(task, ("val_loss", "min"))
        )
    if mode is None:
        mode = "max" if metric.removeprefix("val_") in _MAXIMISED else "min"
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, not {mode!r}")
    return metric, mode
