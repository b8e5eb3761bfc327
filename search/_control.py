"""Controlling a sweep from outside it: `hpsearch stop` (a stop file the run watches), the deadline of
`--hours`, the free-disk check before a run starts, and the per-study lock that keeps a second `hpsearch run`
of a running study out."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ray.tune.stopper import Stopper

from studies import UserError

MIN_FREE_ENV = "HPSEARCH_MIN_FREE_MB"
DEFAULT_MIN_FREE_MB = 500  # a sweep writes checkpoints and logs all night; refuse to start nearly full


def stop_file(home: Path, study: str) -> Path:
    return home / "control" / f"{study}.stop"


def request_stop(home: Path, study: str) -> Path:
    path = stop_file(home, study)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"stop requested at {time.strftime('%Y-%m-%d %H:%M:%S')} by pid {os.getpid()}\n")
    return path


STOP_FREE_ENV = "HPSEARCH_STOP_FREE_MB"
DEFAULT_STOP_FREE_MB = 100  # a running sweep stops cleanly below this, while there is room to finalise
DISK_CHECK_S = 5.0


def _free_mb(home: Path) -> tuple[float, Path]:
    probe = home
    while not probe.exists():  # the data directory may not exist yet: ask its nearest existing parent
        probe = probe.parent
    return shutil.disk_usage(probe).free / 2**20, probe


def check_free_disk(home: Path) -> None:
    need = float(os.environ.get(MIN_FREE_ENV, DEFAULT_MIN_FREE_MB))
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

    def __init__(self, path: Path, hours: float | None, spent_s: float = 0.0, home: Path | None = None):
        self.path = path
        self.home = home  # whose free disk is watched; below HPSEARCH_STOP_FREE_MB the sweep stops
        self._disk_checked, self._disk_full = -DISK_CHECK_S, None
        # A resumed sweep has what its earlier sessions left of the budget.
        self.deadline = time.monotonic() + hours * 3600 - spent_s if hours else None
        self.path.unlink(missing_ok=True)  # a stale request from an earlier run does not stop this one

    def reason(self) -> str | None:
        if self.path.exists():
            return "stop requested"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "budget"
        return self._disk()

    def _disk(self) -> str | None:
        now = time.monotonic()
        if self.home is not None and self._disk_full is None and now - self._disk_checked >= DISK_CHECK_S:
            self._disk_checked = now
            free, probe = _free_mb(self.home)
            if free < float(os.environ.get(STOP_FREE_ENV, DEFAULT_STOP_FREE_MB)):
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


# ---- one sweep per study at a time ----

HEARTBEAT_S = 10.0  # the lock's heartbeat is rewritten this often while the sweep runs
STALE_S = 60.0  # a heartbeat older than this means the sweep that wrote it is gone (crash, kill -9, reboot)


def lock_file(home: Path, study: str) -> Path:
    return home / "control" / f"{study}.lock"


def read_lock(home: Path, study: str) -> dict | None:
    """The lock of a sweep of `study` that is alive now (pid, host, started, heartbeat), or None."""
    import json
    import socket

    try:
        info = json.loads(lock_file(home, study).read_text())
    except (OSError, ValueError):
        return None
    if time.time() - float(info.get("heartbeat", 0)) > STALE_S:
        return None
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return None
        except (PermissionError, KeyError, ValueError):
            pass
    return info


def running_error(study: str, info: dict) -> UserError:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
    return UserError(
        f"study {study!r} is already running: pid {info.get('pid')} on {info.get('host')}, started {started} "
        f"(end it with `hpsearch stop {study}`)"
    )


class StudyLock:
    """Held by the one `hpsearch run` of a study: a file with its pid, host and a heartbeat that a thread
    refreshes. A second run finds a fresh heartbeat and refuses; a crashed run's lock goes stale and is
    taken over."""

    def __init__(self, home: Path, study: str):
        import socket
        import threading

        self.path, self.study = lock_file(home, study), study
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"hpsearch-lock-{study}", daemon=True)

    def acquire(self) -> StudyLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._staged()
        try:
            os.link(tmp, self.path)  # atomic, and fails if a lock exists: two fresh runs cannot both win
        except FileExistsError:
            other = read_lock(self.path.parent.parent, self.study)
            if other is not None and other.get("pid") != os.getpid():
                tmp.unlink(missing_ok=True)
                raise running_error(self.study, other) from None
            os.replace(tmp, self.path)  # a stale lock, left by a crash: take it over
        else:
            tmp.unlink()
        self._thread.start()
        return self

    def _staged(self) -> Path:
        import json

        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**self.info, "heartbeat": time.time()}))
        return tmp

    def _write(self) -> None:
        os.replace(self._staged(), self.path)  # atomic: a reader sees the old heartbeat or the new, never half

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError:
                pass  # a full disk: the next beat tries again; the sweep itself reports the disk

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)
