"""The one channel between a trainable and whatever runs it.

A trainable never imports ray or mlflow: it talks to a `Reporter`. The search engine adapts it to Ray Tune;
tests and `hpsearch check` use `MemoryReporter`. Keeping the surface this small (report, restore, a seed,
a per-worker cache) is what lets the same training code run under Ray, in a unit test or in a notebook.
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

from studies.words import EPOCH, STOP_DIVERGED, STOP_EARLY, STOP_KEY, TRAIN_SECONDS

from ._lru import DATA_CONFIGS_KEPT, LRU

# Data sets built in this process, shared by the trials the process runs (Ray reuses workers): the last few
# data configurations, so a sweep that searches them does not grow the worker.
_WORKER_CACHE = LRU(DATA_CONFIGS_KEPT)


class Reporter(abc.ABC):
    """What a trainable may ask of the engine that runs it."""

    # The study's objective: the metric the trial checkpoints on and early-stops on.
    metric: str = "val_loss"
    mode: str = "min"
    # How many trials this worker process is expected to run in the study: what a one-off cost paid per
    # worker (compiling a graph) is amortised over.
    trials_per_worker: int = 1

    @abc.abstractmethod
    def _emit(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        """Deliver one epoch's metrics (and maybe a checkpoint) to the engine."""

    @abc.abstractmethod
    def restore(self) -> dict[str, Any] | None:
        """The checkpoint dict to continue from, or None for a fresh start."""

    @property
    @abc.abstractmethod
    def seed(self) -> int:
        """This trial's seed: derived from the study seed and the trial's index, so a sweep repeats."""

    def report(
        self,
        epoch: int,
        metrics: Mapping[str, float],
        checkpoint: dict[str, Any] | None = None,
        stop: str | None = None,
    ) -> None:
        """Report one epoch (1-based). Pass `checkpoint` when the trial's best value improved, and `stop`
        (STOP_EARLY or STOP_DIVERGED) on the last report of a trial that ends itself; then return."""
        if stop not in (None, STOP_EARLY, STOP_DIVERGED):
            raise ValueError(f"stop must be None, {STOP_EARLY!r} or {STOP_DIVERGED!r}, not {stop!r}")
        clash = {EPOCH, STOP_KEY, TRAIN_SECONDS} & set(metrics)
        if clash:
            raise ValueError(f"metric names {sorted(clash)} are reserved by the reporter")
        values = {k: float(v) for k, v in metrics.items()}
        if stop is None and any(not math.isfinite(v) for v in values.values()):
            # A non-finite metric must never reach the sampler as if it were a value.
            stop = STOP_DIVERGED
        values[EPOCH] = int(epoch)
        if stop is not None:
            values[STOP_KEY] = stop
        self._emit(values, checkpoint)

    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """Build `key` once per worker process and hand the same object to later trials (while it is among the
        last DATA_CONFIGS_KEPT keys used)."""
        return _WORKER_CACHE.get_or_build(key, build)


class MemoryReporter(Reporter):
    """Keeps reports in lists: for tests, preflight checks and notebooks."""

    def __init__(
        self,
        seed: int = 0,
        checkpoint: dict[str, Any] | None = None,
        metric: str = "val_accuracy",
        mode: str = "max",
    ):
        self._seed = seed
        self.metric, self.mode = metric, mode
        self._restore_from = checkpoint
        self.results: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []

    def _emit(self, metrics, checkpoint):
        self.results.append(metrics)
        if checkpoint is not None:
            # A checkpoint holds live tensors (state_dict); keep a snapshot, as saving to disk would.
            self.checkpoints.append(copy.deepcopy(checkpoint))

    def restore(self):
        return self._restore_from

    @property
    def seed(self) -> int:
        return self._seed
