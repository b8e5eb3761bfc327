"""A user's splits as the loop takes them: tensors `(inputs, targets)` or a map-style `Dataset`.

The rules (README, "Bringing your own model"):
- Tensors (or numpy arrays) become a `Split`; the loop keeps them on the GPU when they fit there.
- A Dataset whose estimated size (its length times its first item's bytes) is at most `materialise_mb` is read
  once per worker into tensors and then takes the same path. Its random transforms are then drawn once; for
  fresh augmentation every epoch, give uint8 images and the loop's flip/crop/jitter, or `materialise_mb=0`.
- A larger Dataset is a `Stream`: each epoch DataLoader workers read and collate its batches, pinned and
  prefetched.
- Inputs that are a tuple of tensors (a multi-input model) are packed side by side into one (N, D1+D2+...)
  tensor, so that the loop, `check` and the served model see one array; a `Layout` unpacks them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import numpy as np
import torch

from ._device import HostBatches
from ._loop import Split
from ._tasks import CUSTOM

HEAD = 2048  # examples of a streamed split that `check` and the report look at


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each input of a multi-input model sits in the packed (N, D) tensor."""

    shapes: tuple[tuple[int, ...], ...]  # per-example shape of each input
    dtypes: tuple[torch.dtype, ...]

    @classmethod
    def of(cls, parts) -> Layout:
        return cls(tuple(tuple(p.shape[1:]) for p in parts), tuple(p.dtype for p in parts))

    @property
    def dtype(self) -> torch.dtype:
        """The packed tensor's: the inputs' own when they share one, float32 otherwise (exact for ints < 2**24)."""
        return self.dtypes[0] if len(set(self.dtypes)) == 1 else torch.float32

    def pack(self, parts) -> torch.Tensor:
        if Layout.of(parts).shapes != self.shapes:
            raise ValueError(f"inputs of shapes {Layout.of(parts).shapes} where the training split has {self.shapes}")
        return torch.cat([p.reshape(len(p), -1).to(self.dtype) for p in parts], dim=1)

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sizes = [math.prod(s) for s in self.shapes]
        return tuple(
            part.reshape(len(x), *shape).to(dtype)
            for part, shape, dtype in zip(x.split(sizes, dim=1), self.shapes, self.dtypes)
        )


def _tensor(a, what: str) -> torch.Tensor:
    t = torch.as_tensor(a)
    if t.dtype == torch.float64:  # numpy's default; the model's weights are float32
        t = t.float()
    if t.dim() == 0:
        raise ValueError(f"{what}: a scalar, where a tensor with one row per example was expected")
    return t


def targets(y, task: str, n: int, what: str) -> torch.Tensor:
    """The task's target dtype: class indices int64, regression float32. Reconstruction needs none."""
    if task == "reconstruction" and y is None:
        return torch.zeros(n, dtype=torch.int64)  # unused: the target is the input's pixels
    y = _tensor(y, what)
    if task in ("classification", "segmentation"):
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(
                f"{what}: {task} targets must be integer class indices, not {y.dtype}; "
                "for real-valued targets use task='regression'"
            )
        return y.long()
    if task == "regression":
        return y.float()
    return y


def _bytes(t) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    if isinstance(t, (tuple, list)):
        return sum(_bytes(v) for v in t)
    return np.asarray(t).nbytes


def _item(item) -> tuple[Any, Any]:
    """A Dataset item as (inputs, target): `(x, y)`, or `x` alone (reconstruction)."""
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    return item, None


class Collate:
    """Dataset items -> (packed inputs, task targets): a class, so DataLoader workers can pickle it."""

    def __init__(self, layout: Layout | None, task: str):
        self.layout, self.task = layout, task

    def __call__(self, items):
        xs, ys = zip(*(_item(i) for i in items))
        if self.layout is not None:
            x = self.layout.pack(
                [torch.stack([_tensor(v[k], "input") for v in xs]) for k in range(len(self.layout.shapes))]
            )
        else:
            x = torch.stack([_tensor(v, "input") for v in xs])
        y = None if ys[0] is None else torch.stack([torch.as_tensor(v) for v in ys])
        return x, targets(y, self.task, len(x), "Dataset targets")


class Stream:
    """A Dataset too large to materialise: the loop asks it for a `HostBatches` feed of DataLoader workers."""

    def __init__(self, dataset, collate: Collate, item_shape: tuple[int, ...], dtype: torch.dtype, workers: int):
        self.dataset, self.collate, self.workers = dataset, collate, workers
        # Shape and dtype without the data: what the loop reads off a split's `x` (layout, compile key).
        self.x = torch.empty((len(dataset), *item_shape), dtype=dtype, device="meta")
        self._feeds: dict[str, HostBatches] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def resident(self, device: torch.device) -> Stream:
        return self

    def to(self, device: torch.device) -> Stream:
        return self

    def feed(self, device: torch.device) -> HostBatches:
        """Persistent workers, made once per device and kept for the worker's later trials."""
        if str(device) not in self._feeds:
            self._feeds[str(device)] = HostBatches(
                None, None, device, self.workers, dataset=self.dataset, collate=self.collate
            )
        return self._feeds[str(device)]

    def head(self, n: int = HEAD) -> Split:
        return Split(*self.collate([self.dataset[i] for i in range(min(n, len(self)))]))


def as_split(split, task: str, layout: Layout | None, materialise_mb: float, workers: int, what: str):
    """One user split -> a `Split` (tensors, or a small Dataset read once) or a `Stream`, and its `Layout`."""
    if isinstance(split, torch.utils.data.Dataset):
        if len(split) == 0:
            raise ValueError(f"{what}: an empty Dataset")
        x0, y0 = _item(split[0])
        if isinstance(x0, (tuple, list)):
            layout = layout or Layout.of([_tensor(v, "input")[None] for v in x0])
        collate = Collate(layout, task)
        if len(split) * _bytes((x0, 0 if y0 is None else y0)) <= materialise_mb * 2**20:
            loader = torch.utils.data.DataLoader(
                split, batch_size=256, collate_fn=collate, num_workers=workers if len(split) > 4096 else 0
            )
            xs, ys = zip(*loader)
            return Split(torch.cat(xs), torch.cat(ys)), layout
        first = collate([split[0]])[0]
        return Stream(split, collate, tuple(first.shape[1:]), first.dtype, workers), layout
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise ValueError(f"{what}: expected (inputs, targets) or a torch Dataset, not {type(split).__name__}")
    x, y = split
    if isinstance(x, (tuple, list)):
        parts = [_tensor(v, f"{what} inputs") for v in x]
        layout = layout or Layout.of(parts)
        x = layout.pack(parts)
    else:
        x = _tensor(x, f"{what} inputs")
    y = targets(y, task, len(x), f"{what} targets")
    if len(y) != len(x):
        raise ValueError(f"{what}: {len(x)} inputs but {len(y)} targets")
    return Split(x, y), layout


def fingerprint(splits: dict[str, Any]) -> str:
    """Of the tensors; of a streamed split, its length and first items (reading it all would cost an epoch)."""
    h = hashlib.sha256()
    for name in sorted(splits):
        s = splits[name]
        h.update(f"{name}|{len(s)}|".encode())
        split = s.head(8) if isinstance(s, Stream) else s
        for t in (split.x, split.y):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


__all__ = ["CUSTOM", "Collate", "Layout", "Stream", "as_split", "fingerprint", "targets"]
