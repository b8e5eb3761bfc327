"""Controlling a sweep from outside it: `hpsearch stop` (a stop file the run watches), the deadline of
`--hours`, the free-disk check before a run starts; the per-study lock and the stop file themselves are in
_studylock.py."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ray.tune.stopper import Stopper

from studies import UserError

from ..cluster._studylock import StudyLock

MIN_FREE_ENV = "HPSEARCH_MIN_FREE_MB"
DEFAULT_MIN_FREE_MB = 500  # a sweep writes checkpoints and logs all night; refuse to start nearly full


STOP_FREE_ENV = "HPSEARCH_STOP_FREE_MB"
DEFAULT_STOP_FREE_MB = 100  # a running sweep stops cleanly below this, while there is room to finalise
DISK_CHECK_S = 5.0


def _free_mb(home: Path) -> tuple[float, Path]:
    probe = home
    while not probe.exists():  # the data directory may not exist yet: ask its nearest existing parent
        probe = probe.parent
    return shutil.disk_usage(probe).free / 2**20, probe


def env_mb(name: str, default: float) -> float:
    """A size in MB from the environment; a value that is not a number >= 0 is the user's to fix."""
    text = os.environ.get(name)
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise UserError(f"{name}: {text!r} is not a size in MB (a number >= 0)")
    return value


def check_free_disk(home: Path) -> None:
    need = env_mb(MIN_FREE_ENV, DEFAULT_MIN_FREE_MB)
    env_mb(STOP_FREE_ENV, DEFAULT_STOP_FREE_MB)  # read while the sweep runs: checked before it starts
    free, probe = _free_mb(home)
    if free < need:
        raise UserError(
            f"only {free:.0f} MB free under {probe}; a sweep needs at least {need:.0f} MB "
            f"(free some space, point {'HPSEARCH_HOME'} elsewhere, or lower {MIN_FREE_ENV})"
        )


class Halt(Stopper):
    """Ends the sweep when `hpsearch stop` asks, the hours run out or the disk is nearly full; also says why,
    so trials cut short are recorded as `stopped` (with that reason) rather than pruned.

    It stops each running trial at its next report (so Tune finishes it like any other trial: callbacks,
    searcher, checkpoint) and the searcher stops suggesting; the sweep then ends by itself. Tune's own
    stop_all would end the experiment without telling anyone about the trials it cut."""

    def __init__(
        self,
        path: Path,
        hours: float | None,
        spent_s: float = 0.0,
        home: Path | None = None,
        lock: StudyLock | None = None,
    ):
        self.path = path
        self.lock = lock  # a lock another machine took over (our heartbeat stalled) ends this sweep
        self.home = home  # whose free disk is watched; below HPSEARCH_STOP_FREE_MB the sweep stops
        self._disk_checked, self._disk_full = -DISK_CHECK_S, None
        # A resumed sweep has what its earlier sessions left of the budget.
        self.deadline = time.monotonic() + hours * 3600 - spent_s if hours else None
        self.path.unlink(missing_ok=True)  # a stale request from an earlier run does not stop this one

    def __getstate__(self):
        return {**self.__dict__, "lock": None}  # Ray pickles the stopper into tuner.pkl; the lock is this process's

    def reason(self) -> str | None:
        if self.path.exists():
            return "stop requested"
        if self.lock is not None and self.lock.lost_to is not None:
            return f"lock taken over by pid {self.lock.lost_to.get('pid')} on {self.lock.lost_to.get('host')}"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "budget"
        return self._disk()

    def _disk(self) -> str | None:
        now = time.monotonic()
        if self.home is not None and self._disk_full is None and now - self._disk_checked >= DISK_CHECK_S:
            self._disk_checked = now
            free, probe = _free_mb(self.home)
            if free < env_mb(STOP_FREE_ENV, DEFAULT_STOP_FREE_MB):
                self._disk_full = f"disk full: {free:.0f} MB left under {probe}"
        return self._disk_full

    def __call__(self, trial_id, result) -> bool:
        return self.reason() is not None

    def stop_all(self) -> bool:
        return False

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended the sweep; Ray saved its state, so `--resume` continues it."""


class Signals:
    """While Ray runs the sweep: the first Ctrl-C or SIGTERM asks Tune to end the sweep and save its state
    (Tune's own handler, on SIGUSR1); a second one stops at once."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> Signals:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers; Tune then keeps its own Ctrl-C handling
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        import signal

        tune_listens = signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        if self.received is not None or not tune_listens:
            raise KeyboardInterrupt
        self.received = signum
        signal.raise_signal(signal.SIGUSR1)

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
