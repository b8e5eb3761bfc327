"""k-fold cross-validation of a `from_model` trainable: which pooled examples each fold holds out.

A config carrying `FOLD_KEY: [i, k]` trains and validates on fold i of k: the user's train and val splits
pooled (train first, then val), split into k folds (stratified by class for classification, by the config's
`split_seed`), fold i held out as "val" and the rest as "train". The test split is never part of the pool, so
cross-validating finalists leaves it as unread as the search did. Everything computed from a training split
(normalisation statistics, a user's `preprocess`) comes from the fold's training part, because the factory
builds it from the folded splits exactly as it would from the user's.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import torch

from ._loop import Split
from ._userdata import Stream

FOLD_KEY = "cv_fold"  # reserved config key: [fold index 0..k-1, number of folds k >= 2]


def fold_of(config: dict) -> tuple[int, int] | None:
    """The config's (i, k), checked; None when it asks for no fold."""
    value = config.get(FOLD_KEY)
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)
    if not ok or not (value[1] >= 2 and 0 <= value[0] < value[1]):
        raise ValueError(f"{FOLD_KEY} must be [i, k] with k >= 2 folds and 0 <= i < k, not {value!r}")
    return int(value[0]), int(value[1])


def unfolded(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != FOLD_KEY}


def assign(labels: np.ndarray | None, n: int, k: int, seed: int) -> np.ndarray:
    """Each pooled example's fold (int64, n): stratified by `labels` when given, otherwise plain k-fold."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if labels is not None:
        classes, counts = np.unique(labels, return_counts=True)
        if counts.min() < k:
            small = int(np.argmin(counts))
            raise ValueError(
                f"class {classes[small]} has {counts[small]} examples in the pooled train and val splits, "
                f"fewer than the {k} folds asked for: use fewer folds"
            )
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        if n < k:
            raise ValueError(f"{n} examples in the pooled train and val splits, fewer than the {k} folds asked for")
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.empty(n, dtype=np.int64)
    for i, (_, held) in enumerate(splitter.split(np.zeros(n), labels)):
        fold[held] = i
    return fold


@dataclasses.dataclass(frozen=True)
class Pool:
    """The user's train and val splits side by side, with each example's fold."""

    x: torch.Tensor
    y: torch.Tensor
    fold: np.ndarray  # int64 (n,): the fold each pooled example is held out in
    stratified: bool


def pool(train: Split | Stream, val: Split | Stream, task: str, k: int, seed: int) -> Pool:
    for name, split in (("train", train), ("val", val)):
        if isinstance(split, Stream):
            raise ValueError(
                f"cross-validation folds need the {name} split in memory, and it streams (a Dataset over "
                "materialise_mb MiB): raise materialise_mb or give tensors"
            )
    x, y = torch.cat((train.x, val.x)), torch.cat((train.y, val.y))
    stratified = task == "classification"
    return Pool(x, y, assign(y.numpy() if stratified else None, len(y), k, seed), stratified)


def folded(pooled: Pool, i: int) -> tuple[Split, Split, np.ndarray]:
    """Fold i's training part, its held-out part, and the held-out examples' positions in the pool."""
    held = np.flatnonzero(pooled.fold == i)
    kept = torch.from_numpy(np.flatnonzero(pooled.fold != i))
    index = torch.from_numpy(held)
    return Split(pooled.x[kept], pooled.y[kept]), Split(pooled.x[index], pooled.y[index]), held


def plan(pooled: Pool, k: int, seed: int) -> dict[str, Any]:
    """What a record needs to tell the folds apart: the same digest for the same data, k and seed."""
    h = hashlib.sha256(f"{k}|{len(pooled.fold)}|".encode())
    h.update(pooled.fold.tobytes())
    return {
        "folds": k,
        "examples": len(pooled.fold),
        "stratified": pooled.stratified,
        "seed": seed,
        "digest": h.hexdigest(),
    }


def fold_plan(trainable, config: dict, k: int) -> dict[str, Any]:
    """The fold layout of `trainable`'s data for `config` with `k` folds, without training:
    {"folds", "examples", "stratified", "seed", "digest"}. ValueError (one line) when it cannot fold."""
    if not trainable.can_fold or trainable.folds is None:
        raise ValueError(
            f"trainable {trainable.name!r} cannot be cross-validated: only a trainables.from_model one can "
            "(a plain train function has no data the folds could split)"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"folds must be an integer of at least 2, not {k!r}")
    return trainable.folds(unfolded(config), k)
