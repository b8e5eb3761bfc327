"""What every data set loader shares: the request it gets, what it hands back, the error for files that are not
there, and how examples are held out for validation and test and limited in number."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "val", "test")


class DatasetMissing(FileNotFoundError):
    """The data set is not where it was looked for. str() is one line naming the place and the files expected."""


Splits = dict[str, torch.Tensor]  # "train" | "val" | "test" -> tensor
Loaded = tuple[str, Splits, Splits, list[str], str]  # task, x, y, classes, source


@dataclasses.dataclass(frozen=True)
class Request:
    """load_dataset's arguments, checked, as every loader gets them."""

    name: str
    root: Path | None
    split_seed: int
    val_fraction: float
    image_size: int | None
    download: bool
    limit: int | None


def hold_out(idx: np.ndarray, labels: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """idx -> (kept, held out). Stratified by label when every class can give an example to each side."""
    from sklearn.model_selection import train_test_split

    stratify = None
    if labels is not None:
        counts = np.unique(labels, return_counts=True)[1]
        held = math.ceil(fraction * len(idx))
        if counts.min() >= 2 and len(counts) <= min(held, len(idx) - held):
            stratify = labels
    return train_test_split(idx, test_size=fraction, stratify=stratify, random_state=seed)


def three_way(labels: np.ndarray | None, n: int, test: float, val: float, seed: int) -> dict[str, np.ndarray]:
    """Test held out of everything, then validation out of the rest: the order the digits trainables use."""
    rest, test_idx = hold_out(np.arange(n), labels, test, seed)
    train, val_idx = hold_out(rest, None if labels is None else labels[rest], val, seed)
    return {"train": train, "val": val_idx, "test": test_idx}


def head(idx: np.ndarray, labels: np.ndarray | None, limit: int | None) -> np.ndarray:
    """At most `limit` of idx, in their order: round-robin over the classes, so a small subset still has them all."""
    if limit is None or len(idx) <= limit:
        return idx
    if labels is None:
        return idx[:limit]
    order = np.argsort(labels, kind="stable")
    rank = np.empty(len(idx), dtype=np.int64)  # each example's position within its class
    rank[order] = np.arange(len(idx)) - np.searchsorted(labels[order], labels[order])
    return idx[np.sort(np.lexsort((np.arange(len(idx)), rank))[:limit])]
