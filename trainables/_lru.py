"""What a worker keeps between trials, bounded: the least recently used entry goes first.

Ray Tune's `reuse_actors` keeps one worker process for a whole sweep, so anything it caches per data set,
architecture or batch shape (data sets, their copies on the GPU, compiled models) would grow with every new
configuration a sweep tries. Every such cache is an `LRU`: bounded by entries, and where its values hold GPU
memory also by bytes, a share of what the GPU has free (`LRU.budget`). `release_caches` empties them all: the
driver calls it after planning, so it never holds a data set while the sweep runs.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

# Data configurations (data set, split seed, image size, limit...) a worker keeps between trials. Two: a sweep
# alternating between two image sizes does not reload; a third evicts the one least recently used. One
# configuration holds the data set, its per-worker splits and their resident copies (4 tensors), so the caches
# sized by it evict together.
DATA_CONFIGS_KEPT = 2

_ALL: weakref.WeakSet[LRU] = weakref.WeakSet()


class LRU:
    """A dict of at most `entries` items, evicting the least recently used; `nbytes(value)` sizes an entry
    when a byte budget is given to `put`."""

    def __init__(self, entries: int, nbytes: Callable[[Any], int] | None = None):
        if entries < 1:
            raise ValueError(f"an LRU holds at least one entry, not {entries}")
        self.entries, self.nbytes = entries, nbytes or (lambda _: 0)
        self.bytes = 0  # the sum of nbytes over the entries held
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        _ALL.add(self)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __getitem__(self, key: Hashable) -> Any:
        """The value under `key`, now the most recently used. KeyError when absent."""
        self._items.move_to_end(key)
        return self._items[key][0]

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self[key] if key in self._items else default

    def __iter__(self):
        return iter(list(self._items))

    def keys(self):
        return list(self._items)

    def items(self):
        return [(k, v) for k, (v, _) in self._items.items()]

    def put(self, key: Hashable, value: Any, budget: int | None = None) -> Any:
        """Keep `value` under `key` (the most recently used), evicting the least recently used entries until
        both the entry bound and `budget` bytes (when given) hold. Returns `value`."""
        self.pop(key)
        size = self.nbytes(value)
        while self._items and (len(self._items) >= self.entries or (budget is not None and self.bytes + size > budget)):
            self.pop(next(iter(self._items)))
        self._items[key] = (value, size)
        self.bytes += size
        return value

    def budget(self, free: int, share: float) -> int:
        """Bytes this cache may hold on a GPU with `free` bytes free: `share` of the memory it could have, i.e.
        what is free plus what it holds already (its own tensors count as used; evicting them frees them)."""
        return int(share * (free + self.bytes))

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The value under `key`, built (and kept) on the first call."""
        if key in self._items:
            return self[key]
        return self.put(key, build())

    def pop(self, key: Hashable) -> Any:
        value, size = self._items.pop(key, (None, 0))
        self.bytes -= size
        return value

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


def release_caches() -> None:
    """Empty every LRU in this process: what a worker kept for later trials, dropped (the driver's, after
    planning; the memory goes back once nothing else refers to it)."""
    for cache in list(_ALL):
        cache.clear()
