"""One worker's copy of a user's data for `from_model`: the splits `data(config)` returned, made into what the
loop takes, and the config keys it read, which key the per-worker cache (DESIGN.md, "Data once per worker,
keyed by what it read")."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping

import numpy as np
import torch

from ._folds import folded, pool
from ._loop import Split, _loader_workers
from ._userdata import HEAD, Stream, as_split, fingerprint

SPLITS = ("train", "val", "test")


class ReadKeys(dict):
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


class WorkerData:
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
        train, val = (s() if deferred(s) else s for s in splits[:2])
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
        return channel_stats(self.head("train").x if isinstance(self.train, Stream) else self.train.x)

    @functools.cached_property
    def fingerprint(self) -> str:
        return fingerprint({"train": self.train, "val": self.val, **self._test_for_fingerprint()})

    def _test_for_fingerprint(self) -> dict:
        # Tensors are hashed as given (no transform runs); a Dataset's test split is not read before the test.
        if isinstance(self._test, torch.utils.data.Dataset) or deferred(self._test):
            return {}
        return {"test": as_split(self._test, self.task, self.layout, 0, 0, "test split")[0]}

    def key(self, key) -> None:
        """Name the tensors, so that each is copied to a GPU once per worker, not once per trial."""
        self.cache_key = key
        self.train, self.val = (
            Split(s.x, s.y, (key, n)) if isinstance(s, Split) else s
            for s, n in ((self.train, "train"), (self.val, "val"))
        )

    def fold(self, i: int, k: int, seed: int) -> WorkerData:
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
                test = self._test() if deferred(self._test) else self._test
                self.test_split, _ = as_split(
                    test, self.task, self.layout, self.materialise_mb, _loader_workers(), "test split"
                )
            return self.test_split
        return {"train": self.train, "val": self.val}[name]

    def head(self, name: str) -> Split:
        split = self.split(name)
        return split.head() if isinstance(split, Stream) else Split(split.x[:HEAD], split.y[:HEAD])


def channel_stats(x: torch.Tensor, rows: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def deferred(split) -> bool:
    """A split given as a function, called only when the split is needed (a test split: by the test)."""
    return callable(split) and not isinstance(split, torch.utils.data.Dataset)
