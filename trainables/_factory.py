"""`from_model`: a user's model and data made into a `Trainable` with every hook the built-ins have.

The user writes `model(config) -> nn.Module` and `data(config) -> (train, val, test)`; the factory gives
training on the same loop as the built-ins (`_loop.fit`: resident data and a recorded step on a GPU,
schedules, clipping, patience, precision, compile, resume from `reporter.restore()`), the one test
evaluation, a servable model that takes raw inputs, the report's samples and `hpsearch check`'s setup.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ._folds import fold_of, folded, plan, pool, unfolded
from ._held import Held, held_out
from ._loop import (
    AUGMENT_DEFAULTS,
    AUGMENT_HYPERPARAMETERS,
    LOOP_DEFAULTS,
    LOOP_HYPERPARAMETERS,
    Prep,
    Split,
    _loader_workers,
    default_device,
    evaluate,
    fit,
    make_optimizer,
)
from ._preflight import Setup
from ._registry import Trainable
from ._reporter import _WORKER_CACHE, MemoryReporter, Reporter
from ._tasks import CUSTOM, DEFAULT_METRIC, TASK_METRICS, TASKS, loss_fn
from ._userdata import HEAD, Layout, Stream, as_split, fingerprint

SPLITS = ("train", "val", "test")
# A Dataset estimated at most this many MiB is read once per worker into tensors (then resident on a GPU
# where it fits); a larger one streams through DataLoader workers every epoch.
MATERIALISE_MB = 1024
# Metrics where larger is better; any other (loss, mse, mae, psnr's inverse...) is minimised.
_MAXIMISED = ("accuracy", "iou", "dice", "psnr")
_ANY = MemoryReporter()  # the hooks run outside a trial: they share the worker's cache through it


class _Reads(dict):
    """A config that records which keys `data(config)` read: those, and only those, key its cache."""

    def __init__(self, config: dict):
        super().__init__(config)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def _all(self):
        self.read.update(super().keys())

    def keys(self):
        self._all()
        return super().keys()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()

    def __iter__(self):
        self._all()
        return super().__iter__()


class _Data:
    """One worker's splits for one data configuration. The test split stays as the user gave it until
    `evaluate(..., "test")` asks for it."""

    def __init__(self, splits, task: str, materialise_mb: float):
        if isinstance(splits, Mapping):
            splits = tuple(splits.get(n) for n in SPLITS)
        if not isinstance(splits, (tuple, list)) or len(splits) != 3 or any(s is None for s in splits):
            raise ValueError(
                "data(config) must return the train, val and test splits: (train, val, test) or "
                "{'train': ..., 'val': ..., 'test': ...}, each (inputs, targets) or a Dataset"
            )
        self.task, self.materialise_mb, self._test = task, materialise_mb, splits[2]
        train, val = (s() if _deferred(s) else s for s in splits[:2])
        self.train, self.layout = as_split(train, task, None, materialise_mb, _loader_workers(), "train split")
        self.val, _ = as_split(val, task, self.layout, materialise_mb, _loader_workers(), "val split")
        self.test_split: Split | Stream | None = None
        self.val_index: np.ndarray | None = None  # the val examples' positions in the pooled train+val (a fold)
        # uint8 images (N, C, H, W) get the built-ins' treatment: normalised on the device with the training
        # split's per-channel statistics, augmented by flip/crop/jitter, and served as uint8.
        self.images = self.layout is None and self.train.x.dtype == torch.uint8 and self.train.x.dim() == 4

    @functools.cached_property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The training split's per-channel mean and std (of its first examples, when it streams)."""
        return _channel_stats(self.head("train").x if isinstance(self.train, Stream) else self.train.x)

    @functools.cached_property
    def fingerprint(self) -> str:
        return fingerprint({"train": self.train, "val": self.val, **self._test_for_fingerprint()})

    def _test_for_fingerprint(self) -> dict:
        # Tensors are hashed as given (no transform runs); a Dataset's test split is not read before the test.
        if isinstance(self._test, torch.utils.data.Dataset) or _deferred(self._test):
            return {}
        return {"test": as_split(self._test, self.task, self.layout, 0, 0, "test split")[0]}

    def key(self, key) -> None:
        """Name the tensors, so that each is copied to a GPU once per worker, not once per trial."""
        self.cache_key = key
        self.train, self.val = (
            Split(s.x, s.y, (key, n)) if isinstance(s, Split) else s
            for s, n in ((self.train, "train"), (self.val, "val"))
        )

    def fold(self, i: int, k: int, seed: int) -> _Data:
        """This data with fold i of k as its train and val (trainables._folds); statistics made afresh."""
        d = copy.copy(self)
        for cached in ("stats", "fingerprint"):
            d.__dict__.pop(cached, None)
        d.train, d.val, d.val_index = folded(pool(self.train, self.val, self.task, k, seed), i)
        d.key((self.cache_key, "fold", i, k, seed))
        return d

    def split(self, name: str) -> Split | Stream:
        if name == "test":
            if self.test_split is None:
                test = self._test() if _deferred(self._test) else self._test
                self.test_split, _ = as_split(
                    test, self.task, self.layout, self.materialise_mb, _loader_workers(), "test split"
                )
            return self.test_split
        return {"train": self.train, "val": self.val}[name]

    def head(self, name: str) -> Split:
        split = self.split(name)
        return split.head() if isinstance(split, Stream) else Split(split.x[:HEAD], split.y[:HEAD])


def _channel_stats(x: torch.Tensor, rows: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the 0..1 scale, a few thousand images at a time (a float
    copy of a whole data set would take four times its memory)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, len(x), rows):
        chunk = x[start : start + rows].double().div_(255)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.pow(2).sum(dim=(0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = total / n
    std = (squares / n - mean.pow(2)).clamp(min=1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _deferred(split) -> bool:
    """A split given as a function, called only when the split is needed (a test split: by the test)."""
    return callable(split) and not isinstance(split, torch.utils.data.Dataset)


class _Unpack:
    """The forward pre-hook that hands a multi-input model its inputs (and applies a user's preprocessing)."""

    def __init__(self, layout: Layout | None, preprocess: nn.Module | None):
        self.layout, self.preprocess = layout, preprocess

    def __call__(self, module, args):
        inputs = self.layout.unpack(args[0]) if self.layout is not None else (args[0],)
        if self.preprocess is not None:
            inputs = self.preprocess(*inputs)
            inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        return inputs


class Served(nn.Module):
    """Raw inputs -> the user's network: the packed inputs unpacked, uint8 images normalised, a user's
    preprocessing applied. What `export` gives MLflow (and `promote` registers)."""

    def __init__(
        self,
        net: nn.Module,
        layout: Layout | None = None,
        preprocess: nn.Module | None = None,
        image_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
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
        inputs = self.layout.unpack(x) if self.layout is not None else (x,)
        if self.preprocess is not None:
            inputs = self.preprocess(*inputs)
            inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        return self.net(*inputs)


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
    name = name or f"{model.__module__}:{model.__qualname__}"
    own = dict(hyperparameters or {})
    all_defaults = {**LOOP_DEFAULTS, **AUGMENT_DEFAULTS, "split_seed": 0, **dict(defaults or {})}
    keysets: list[tuple[str, ...]] = []  # the config keys data() read, per data configuration seen

    def with_defaults(config: dict) -> dict:
        return {**all_defaults, **config}

    def cache_key(config: dict, keys: tuple[str, ...]):
        return ("trainables.from_model", name, keys, tuple(repr(config.get(k)) for k in keys))

    def splits(config: dict, reporter: Reporter | None = None) -> _Data:
        if fold_of(config) is not None:  # the user's splits' data, then the fold of it, both kept per worker
            (i, k), seed, d = fold_of(config), int(config["split_seed"]), splits(unfolded(config), reporter)
            return (reporter or _ANY).cached((d.cache_key, "fold", i, k, seed), lambda: d.fold(i, k, seed))
        for keys in keysets:
            if cache_key(config, keys) in _WORKER_CACHE:
                return _WORKER_CACHE[cache_key(config, keys)]
        reads = _Reads(config)
        built = _Data(data(reads), task, materialise_mb)
        keys = tuple(sorted(reads.read))
        built.key(cache_key(config, keys))
        if keys not in keysets:
            keysets.append(keys)
        return (reporter or _ANY).cached(cache_key(config, keys), lambda: built)

    def the_loss(config: dict):
        return loss if loss is not None else loss_fn(task, config)

    def stats(config: dict, d: _Data) -> tuple[tuple[float, ...], tuple[float, ...]]:
        given = image_stats(config) if image_stats is not None else None
        return given if given is not None else d.stats

    def prep(config: dict, d: _Data) -> Prep | None:
        if not d.images:
            return None
        return Prep(*stats(config, d), bool(config["flip"]), int(config["crop"]), float(config["jitter"]))

    def preprocessing(config: dict, d: _Data) -> nn.Module | None:
        if preprocess is None or d.images:
            return None
        head = d.head("train")
        module = preprocess(config, d.layout.unpack(head.x) if d.layout is not None else head.x)
        return module.eval() if isinstance(module, nn.Module) else module

    def build(config: dict, d: _Data, device: torch.device, hook: bool = True) -> nn.Module:
        net = model(config)
        if not isinstance(net, nn.Module):
            raise TypeError(f"model(config) must return a torch.nn.Module, not {type(net).__name__}")
        pre = preprocessing(config, d) if hook else None
        if hook and (d.layout is not None or pre is not None):
            net.register_forward_pre_hook(_Unpack(d.layout, pre.to(device) if pre is not None else None))
        return net

    def load(config: dict, state: dict, d: _Data, device: torch.device) -> nn.Module:
        net = build(config, d, device)
        net.load_state_dict(state)
        return net.to(device).eval()

    def train(config: dict, reporter: Reporter) -> None:
        config = with_defaults(config)
        d, device = splits(config, reporter), default_device()
        fit(
            config,
            reporter,
            lambda c: build(c, d, device),
            d.train,
            d.val,
            device,
            task=task,
            prep=prep(config, d),
            loss=loss,
            metrics=metrics,
        )

    def evaluate_split(config: dict, state: dict, split: str) -> dict[str, float]:
        config = with_defaults(config)
        d, device = splits(config), default_device()
        result = evaluate(
            load(config, state, d, device),
            d.split(split),
            task=task,
            prep=prep(config, d),
            config=config,
            per_class=task == "classification",
            loss=loss,
            metrics=metrics,
        )
        return {f"{split}_{k}": v for k, v in result.items()}

    def export(config: dict, state: dict) -> tuple[nn.Module, np.ndarray]:
        config = with_defaults(config)
        d = splits(config)
        net = build(config, d, torch.device("cpu"), hook=False)
        net.load_state_dict(state)
        served = Served(net.eval(), d.layout, preprocessing(config, d), stats(config, d) if d.images else None)
        return served.eval(), d.head("val").x[:4].numpy().copy()

    def predict(config: dict, state: dict, split: str = "val") -> Held:
        config = with_defaults(config)
        d, device = splits(config), default_device()
        data = d.split(split)  # "test": only an ensemble's one test evaluation asks
        index = d.val_index if split == "val" and d.val_index is not None else np.arange(len(data))
        return held_out(load(config, state, d, device), data, index, task, prep(config, d))

    def samples(config: dict, split: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...] | None]:
        head = splits(with_defaults(config)).head(split)
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

    def setup(config: dict) -> Setup:
        config = with_defaults(config)
        d = splits(config)
        p = prep(config, d)

        def ready(name: str) -> Split:
            head = d.head(name)
            if p is None:
                return head
            x, y, pixels = p(head.x, head.y)
            return Split(x, pixels if task == "reconstruction" else y)

        train_split, val_split = ready("train"), ready("val")
        classes = None
        if task == "classification":
            classes = int(max(train_split.y.max(), val_split.y.max())) + 1
        return Setup(
            model=lambda: build(config, d, torch.device("cpu")),
            train=train_split,
            val=val_split,
            loss=the_loss(config),
            optimizer=lambda params, lr: make_optimizer(params, {**config, "lr": lr}),
            n_classes=classes,
        )

    def data_info(config: dict) -> dict[str, Any]:
        config = with_defaults(unfolded(config))  # the data's, whichever fold a config trains on
        return {"dataset": name, "fingerprint": splits(config).fingerprint, "split_seed": config["split_seed"]}

    def folds(config: dict, k: int) -> dict[str, Any]:
        config = with_defaults(config)
        d, seed = splits(config), int(config["split_seed"])
        return plan(pool(d.train, d.val, task, k, seed), k, seed)

    trainable = Trainable(
        name=name,
        train=train,
        metric=metric,
        mode=mode,
        hyperparameters={
            **LOOP_HYPERPARAMETERS,
            **{k: f"uint8 image inputs only: {v}" for k, v in AUGMENT_HYPERPARAMETERS.items()},
            "split_seed": "seed of the data splits, for a data(config) that draws them",
            **own,
        },
        defaults=all_defaults,
        evaluate=evaluate_split,
        export=export,
        data_info=data_info,
        samples=samples if task == "classification" else None,
        setup=setup,
        description=description or (model.__doc__ or "").strip().split("\n")[0],
        code=model,
        task=task,
        can_fold=True,
        predict=predict,
        folds=folds,
        # What the loop reports each epoch (trainables._loop.fit): the losses, the task's and your metrics on
        # the validation split, the learning rate and the throughput.
        reports=(
            "train_loss",
            *(f"val_{k}" for k in ("loss", *TASK_METRICS[task], *(metrics or {}))),
            "lr",
            "samples_per_s",
            "peak_mem_mb",
        ),
    )
    return trainable
