"""Image data sets held in memory as compact uint8 tensors, read through torchvision's own loaders.

The training loop moves a whole data set to the GPU once and normalises and augments it there, so this module
hands over raw pixels: x uint8 (N, C, H, W) per split, y int64 labels (N,) or per-pixel classes (N, H, W), and the
training split's per-channel mean/std on the 0..1 scale. Nothing is downloaded unless asked (`download=True`), and
a data set that is not on disk is one line saying where it was looked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._imagefiles import decode, imagefolder, segfolder
from ._loading import SPLITS, DatasetMissing, Loaded, Request, Splits, head, hold_out, three_way

__all__ = ["DATASETS", "DatasetMissing", "ImageData", "load_dataset"]

FLOWERS_SIZE = 64  # pixels a side: the photos are ~500x600, far more than a search's short runs can use
SHAPES_SIZE = 32  # pixels a side
SHAPES_COUNTS = {"train": 1024, "val": 256, "test": 256}  # enough to learn the task, generated in ~0.1 s
SHAPES_CLASSES = ["background", "circle", "square", "triangle"]

DATASETS = {
    "mnist": "handwritten digits, 28x28 gray, 10 classes: ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "fashion-mnist": "clothes, 28x28 gray, 10 classes: ROOT/FashionMNIST/raw/{train,t10k}-{images,labels}-idx*-ubyte",
    "cifar10": "32x32 RGB, 10 classes: ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "flowers102": "Oxford flowers, RGB 64x64 unless image_size, 102 classes, official splits: "
    "ROOT/flowers-102/{jpg/image_00001.jpg..,imagelabels.mat,setid.mat}",
    "imagefolder": "your images, a folder per class: ROOT/CLASS/*.png|jpg, or ROOT/{train,test}/CLASS/*.png|jpg",
    "digits": "scikit-learn's bundled digits, 8x8 gray, 10 classes (no ROOT: ships with scikit-learn)",
    "shapes": "synthetic segmentation, circles/squares/triangles on noise, 32x32 RGB, made from split_seed (no ROOT)",
    "segfolder": "your segmentation pairs: ROOT/images/NAME.png and ROOT/masks/NAME.png (8-bit class index per pixel)",
}


@dataclasses.dataclass
class ImageData:
    """The three splits of one data set, as raw pixels, with what a normalising layer and provenance need."""

    name: str
    task: str  # "classification" or "segmentation"
    x: dict[str, torch.Tensor]  # "train" | "val" | "test" -> uint8 (N, C, H, W), contiguous
    y: dict[str, torch.Tensor]  # int64 labels (N,), or (N, H, W) class index per pixel for segmentation
    classes: list[str]  # class names; segmentation: ["background", ...]
    mean: tuple[float, ...]  # per channel, 0..1 pixel scale, from the training split only
    std: tuple[float, ...]
    fingerprint: str  # sha256[:16] over the three splits' pixels and labels
    split_seed: int
    source: str  # where it was read from

    def __post_init__(self):
        for split in SPLITS:
            x, y = self.x[split], self.y[split]
            if x.dtype != torch.uint8 or x.ndim != 4 or len(x) != len(y):
                raise ValueError(
                    f"{self.name}: split {split!r} has x {x.dtype} {tuple(x.shape)} and y {tuple(y.shape)}; "
                    "expected uint8 (N, C, H, W) and N targets"
                )


def load_dataset(
    name: str,
    root: str | os.PathLike | None,
    *,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    image_size: int | None = None,
    download: bool = False,
    limit: int | None = None,
) -> ImageData:
    """Read a data set named in DATASETS into memory, split into train/val/test by `split_seed`.

    val_fraction: the share of the training data held out for validation, stratified by class. Not used where the
    splits are fixed: flowers102 (official splits), shapes (fixed sizes) and digits (the digits trainables' 20%, so
    the same split_seed gives the same splits). image_size: pixels a side to resize to (shorter side, then centre
    crop), for flowers102, imagefolder, segfolder and shapes. limit: at most this many examples per split,
    deterministic and spread over the classes (for tests and quick runs). download: let torchvision fetch mnist,
    fashion-mnist, cifar10 or flowers102 into `root`.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    for field, value in (("image_size", image_size), ("limit", limit)):
        if value is not None and value < 1:
            raise ValueError(f"{field} must be a positive integer or None, got {value}")
    needs_root = name not in ("digits", "shapes")
    if needs_root and root is None:
        raise DatasetMissing(f"{name}: no data root given; set --data-root ({DATASETS[name]})")
    path = Path(root).expanduser() if needs_root else None
    request = Request(name, path, split_seed, val_fraction, image_size, download, limit)
    task, x, y, classes, source = _LOADERS[name](request)
    fingerprint = _fingerprint(x, y)
    mean, std = _stats(name, path, x["train"], fingerprint)
    return ImageData(name, task, x, y, classes, mean, std, fingerprint, split_seed, source)


# ---- splits ------------------------------------------------------------------------------------------------


def _gather(req: Request, x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    idx = head(idx, y[idx], req.limit)
    return torch.from_numpy(np.ascontiguousarray(x[idx])), torch.from_numpy(y[idx].astype(np.int64))


def _with_val(req: Request, train: tuple[np.ndarray, ...], test: tuple[np.ndarray, ...]) -> tuple[Splits, Splits]:
    """Official train and test arrays -> three splits, validation stratified out of the official training set."""
    kept, val = hold_out(np.arange(len(train[1])), train[1], req.val_fraction, req.split_seed)
    parts = {"train": (*train, kept), "val": (*train, val), "test": (*test, np.arange(len(test[1])))}
    pairs = {split: _gather(req, *part) for split, part in parts.items()}
    return {s: p[0] for s, p in pairs.items()}, {s: p[1] for s, p in pairs.items()}


# ---- torchvision's data sets -------------------------------------------------------------------------------


def _construct(req: Request, make: Callable[[], Any], folder: Path, files: Sequence[str]) -> Any:
    """Build a torchvision data set, turning its "Dataset not found or corrupted" or failed download into one line."""
    try:
        return make()
    except (RuntimeError, OSError) as exc:
        expected = f"{folder} (expected {', '.join(files)})"
        if req.download:  # a URLError, or a RuntimeError listing every mirror tried over several lines
            reason = " ".join(str(exc).split())
            raise DatasetMissing(f"{req.name}: download into {expected} failed: {reason}") from exc
        if not isinstance(exc, RuntimeError):
            raise
        if all((folder / f).exists() for f in files):
            raise DatasetMissing(
                f"{req.name}: the files under {expected} fail torchvision's checksum; "
                "replace them with the official ones or delete them and use download: true"
            ) from None
        raise DatasetMissing(f"{req.name}: no data under {expected}; set --data-root or use download: true") from None


def _mnist(req: Request) -> Loaded:
    from torchvision import datasets

    cls = datasets.MNIST if req.name == "mnist" else datasets.FashionMNIST
    folder = req.root / cls.__name__ / "raw"
    files = [Path(url).stem for url, _ in cls.resources]  # torchvision wants them unpacked: no .gz
    train, test = (
        _construct(req, functools.partial(cls, req.root, train=t, download=req.download), folder, files)
        for t in (True, False)
    )
    # .data is already one uint8 (N, 28, 28) tensor: no image-by-image PIL round trip.
    x, y = _with_val(req, *((ds.data.numpy()[:, None], ds.targets.numpy()) for ds in (train, test)))
    return "classification", x, y, list(train.classes), str(folder)


def _cifar10(req: Request) -> Loaded:
    from torchvision.datasets import CIFAR10

    folder = req.root / CIFAR10.base_folder
    files = [f for f, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    train, test = (
        _construct(req, functools.partial(CIFAR10, req.root, train=t, download=req.download), folder, files)
        for t in (True, False)
    )
    # .data is (N, 32, 32, 3), a transposed view of the files' own (N, 3, 32, 32): transposing back copies nothing.
    x, y = _with_val(req, *((ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets)) for ds in (train, test)))
    return "classification", x, y, list(train.classes), str(folder)


def _flowers102(req: Request) -> Loaded:
    from torchvision.datasets import Flowers102

    folder = req.root / "flowers-102"
    x, y = {}, {}
    for split in SPLITS:
        # loader=str: the data set hands back each image's path, decoded below once, in parallel and downscaled.
        make = functools.partial(Flowers102, req.root, split=split, download=req.download, loader=str)
        ds = _construct(req, make, folder, ["jpg/", "imagelabels.mat", "setid.mat"])
        pairs = [ds[i] for i in range(len(ds))]
        paths = [path for path, _ in pairs]
        labels = np.asarray([label for _, label in pairs], dtype=np.int64)
        keep = head(np.arange(len(labels)), labels, req.limit)
        x[split] = decode([paths[i] for i in keep], "RGB", req.image_size or FLOWERS_SIZE)
        y[split] = torch.from_numpy(labels[keep])
    return "classification", x, y, list(Flowers102.classes), str(folder)


# ---- data that needs no files ------------------------------------------------------------------------------


def _digit_images(req: Request) -> Loaded:
    """8x8, pixels 0..16 scaled to 0..255; the same splits as the digits trainables for the same split_seed."""
    from sklearn.datasets import load_digits

    from . import _digits_pairs as digits_trainables

    digits = load_digits()
    x = np.round(digits.data * 255 / 16).astype(np.uint8).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    test, val = digits_trainables.TEST_FRACTION, digits_trainables.VAL_FRACTION
    pairs = {s: _gather(req, x, y, idx) for s, idx in three_way(y, len(y), test, val, req.split_seed).items()}
    xs, ys = {s: p[0] for s, p in pairs.items()}, {s: p[1] for s, p in pairs.items()}
    return "classification", xs, ys, [str(d) for d in range(10)], "sklearn.datasets.load_digits"


def _shapes(req: Request) -> Loaded:
    """Up to three filled circles, squares or triangles per image, in colours far from the noisy background.

    Each split draws its shapes for the full count whatever the limit, so a limited set is a prefix of the full one.
    """
    size = req.image_size or SHAPES_SIZE
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    x, y = {}, {}
    for k, split in enumerate(SPLITS):
        n = SHAPES_COUNTS[split]
        m = min(n, req.limit or n)
        rng, noise = (np.random.default_rng(s) for s in np.random.SeedSequence([req.split_seed, k]).spawn(2))
        count = rng.integers(1, 4, n)[:m, None, None]
        kind = rng.integers(1, 4, (n, 3))[:m]  # class index of each shape
        centre = rng.uniform(0, size, (n, 3, 2)).astype(np.float32)[:m]
        radius = rng.uniform(size / 10, size / 4, (n, 3)).astype(np.float32)[:m]
        background = rng.integers(0, 256, (n, 3))[:m]
        offset = rng.integers(64, 193, (n, 3, 3))[:m]  # mod 256, at least 64 levels away in every channel
        image = background[:, :, None, None] + noise.normal(0, 12, (m, 3, size, size))
        mask = np.zeros((m, size, size), dtype=np.int64)
        for slot in range(3):  # painted in order: a later shape covers an earlier one
            dy = rows - centre[:, slot, 0, None, None]
            dx = cols - centre[:, slot, 1, None, None]
            r = radius[:, slot, None, None]
            inside = {
                1: dx**2 + dy**2 <= r**2,
                2: np.maximum(abs(dx), abs(dy)) <= r,
                3: (dy <= r) & (2 * abs(dx) <= dy + r),  # apex up, base 2r wide
            }
            shape = kind[:, slot, None, None]
            hit = (slot < count) & np.select([shape == c for c in inside], list(inside.values()))
            mask = np.where(hit, shape, mask)
            colour = (background + offset[:, slot]) % 256
            image = np.where(hit[:, None], colour[:, :, None, None], image)
        x[split] = torch.from_numpy(np.clip(np.round(image), 0, 255).astype(np.uint8))
        y[split] = torch.from_numpy(mask)
    return "segmentation", x, y, list(SHAPES_CLASSES), f"synthetic (split_seed={req.split_seed}, {size}x{size})"


_LOADERS: dict[str, Callable[[Request], Loaded]] = {
    "mnist": _mnist,
    "fashion-mnist": _mnist,
    "cifar10": _cifar10,
    "flowers102": _flowers102,
    "imagefolder": imagefolder,
    "digits": _digit_images,
    "shapes": _shapes,
    "segfolder": segfolder,
}


# ---- provenance and statistics -----------------------------------------------------------------------------


def _fingerprint(x: Splits, y: Splits) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(x[split].numpy())
        h.update(y[split].numpy())
    return h.hexdigest()[:16]


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std (0..1 scale) from a 256-bin histogram: no float copy of the pixels."""
    levels = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for c in range(x.shape[1]):
        # torch's bincount takes uint8 as is (numpy's widens every pixel to int64 first: 40x slower on MNIST).
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        n = counts.sum()
        m = float(counts @ levels / n)
        mean.append(m / 255)
        std.append(math.sqrt(max(float(counts @ levels**2 / n) - m**2, 0.0)) / 255)
    return tuple(mean), tuple(std)


def _stats(
    name: str, root: Path | None, train: torch.Tensor, fingerprint: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The training split's statistics, cached next to the data when that folder is writable."""
    if root is None:
        return _channel_stats(train)
    path = root / ".hpsearch" / f"stats-{name}-{fingerprint}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):  # no cache yet, or unreadable: compute
        cached = json.loads(path.read_text())
        return tuple(cached["mean"]), tuple(cached["std"])
    mean, std = _channel_stats(train)
    with contextlib.suppress(OSError):  # a read-only data root: the statistics are cheap to recompute
        path.parent.mkdir(exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps({"dataset": name, "fingerprint": fingerprint, "mean": mean, "std": std}))
        partial.replace(path)  # atomic: a concurrent trial never reads half a file
    return mean, std
