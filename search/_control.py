"""Controlling a sweep from outside it: `hpsearch stop` (a stop file the run watches), the deadline of
`--hours`, and the free-disk check before a run starts."""

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


def check_free_disk(home: Path) -> None:
    need = float(os.environ.get(MIN_FREE_ENV, DEFAULT_MIN_FREE_MB))
    probe = home
    while not probe.exists():  # the data directory may not exist yet: ask its nearest existing parent
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**20
    if free < need:
        raise UserError(
            f"only {free:.0f} MB free under {probe}; a sweep needs at least {need:.0f} MB "
            f"(free some space, point {'HPSEARCH_HOME'} elsewhere, or lower {MIN_FREE_ENV})"
        )


class Halt(Stopper):
    """Ends the sweep when `hpsearch stop` asks or the hours run out; also says why, so trials cut short
    are recorded as `stopped` rather than pruned.

    It stops each running trial at its next report (so Tune finishes it like any other trial: callbacks,
    searcher, checkpoint) and the searcher stops suggesting; the sweep then ends by itself. Tune's own
    stop_all would end the experiment without telling anyone about the trials it cut."""

    def __init__(self, path: Path, hours: float | None):
        self.path = path
        self.deadline = time.monotonic() + hours * 3600 if hours else None
        self.path.unlink(missing_ok=True)  # a stale request from an earlier run does not stop this one

    def reason(self) -> str | None:
        if self.path.exists():
            return "stop requested"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "budget"
        return None

    def __call__(self, trial_id, result) -> bool:
        return self.reason() is not None

    def stop_all(self) -> bool:
        return False

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
