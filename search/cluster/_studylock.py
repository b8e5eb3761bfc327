"""What every machine sees of a running sweep: its lock (one `hpsearch run` of a study at a time) and the
stop requests of `hpsearch stop`. Both live in the study's state folder, which is on the shared storage when
there is one (search/cluster/_locations.py), so a second machine finds them. Plain files, standard library only:
the query and control commands import this without Ray.

The lock is a series of generations, `control/STUDY.lock.N`, each created with an atomic exclusive
`os.link` (atomic on local filesystems and NFS alike). The holder is the newest generation whose heartbeat
is fresh. A crashed holder's generation goes stale; a machine that finds it stale creates generation N+1,
and when two race for it the link lets exactly one win: the loser then sees a fresh N+1 and refuses. Only
the holder deletes its own generation."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

from studies import UserError

HEARTBEAT_S = 10.0  # the lock's heartbeat is rewritten this often while the sweep runs
STALE_S = 60.0  # a heartbeat older than this means the sweep that wrote it is gone (crash, kill -9, reboot)


def control_dir(root: Path) -> Path:
    return root / "control"


def stop_file(root: Path, study: str) -> Path:
    return control_dir(root) / f"{study}.stop"


def request_stop(root: Path, study: str) -> Path:
    path = stop_file(root, study)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"stop requested at {time.strftime('%Y-%m-%d %H:%M:%S')} by pid {os.getpid()} on {socket.gethostname()}\n"
    )
    return path


def _generations(root: Path, study: str) -> list[tuple[int, Path]]:
    """The study's lock generations, oldest first."""
    pattern = re.compile(re.escape(study) + r"\.lock\.(\d+)$")
    try:
        names = os.listdir(control_dir(root))
    except OSError:
        return []
    found = [(int(m.group(1)), control_dir(root) / n) for n in names if (m := pattern.match(n))]
    return sorted(found)


def _alive(info: dict) -> bool:
    if time.time() - float(info.get("heartbeat", 0)) > STALE_S:
        return False
    if info.get("host") == socket.gethostname():  # on the holder's own machine a dead pid is certain
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError):
            pass
    return True


def _newest(root: Path, study: str) -> tuple[int, dict | None]:
    """(generation, its contents) of the newest lock generation; (0, None) when there is none."""
    generations = _generations(root, study)
    if not generations:
        return 0, None
    number, path = generations[-1]
    try:
        return number, json.loads(path.read_text())
    except (OSError, ValueError):  # deleted between the listing and the read, or being written
        return number, {}


def read_lock(root: Path, study: str) -> dict | None:
    """The lock of a sweep of `study` that is alive now (pid, host, started, heartbeat), or None."""
    _, info = _newest(root, study)
    return info if info and _alive(info) else None


def running_error(study: str, info: dict) -> UserError:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
    return UserError(
        f"study {study!r} is already running: pid {info.get('pid')} on {info.get('host')}, started {started} "
        f"(end it with `hpsearch stop {study}`)"
    )


class StudyLock:
    """Held by the one `hpsearch run` of a study, on whichever machine: a generation file with its pid,
    host and a heartbeat that a thread refreshes."""

    def __init__(self, root: Path, study: str):
        self.root, self.study = root, study
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        self.path: Path | None = None
        self.lost_to: dict | None = None  # set when another machine took the lock over (our heartbeat stalled)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"hpsearch-lock-{study}", daemon=True)

    def acquire(self) -> StudyLock:
        control_dir(self.root).mkdir(parents=True, exist_ok=True)
        staged = control_dir(self.root) / f".{self.study}.lock.{socket.gethostname()}.{os.getpid()}"
        for _ in range(20):
            number, info = _newest(self.root, self.study)
            if info and _alive(info):
                raise running_error(self.study, info)
            if info is None or info:  # none, or a stale generation: try the next one
                staged.write_text(json.dumps({**self.info, "heartbeat": time.time()}))
                target = control_dir(self.root) / f"{self.study}.lock.{number + 1}"
                try:
                    os.link(staged, target)  # atomic and exclusive: of two racers exactly one wins
                except FileExistsError:
                    continue  # another machine won this generation: judge it on the next pass
                finally:
                    staged.unlink(missing_ok=True)
                self.path = target
                for _, older in _generations(self.root, self.study)[:-1]:
                    older.unlink(missing_ok=True)  # the generations we superseded: their holders are gone
                self._thread.start()
                return self
            time.sleep(0.1)  # the newest generation is being written: read it again
        raise UserError(f"study {self.study!r}: could not take its lock under {control_dir(self.root)}")

    def held(self) -> bool:
        number, _ = _newest(self.root, self.study)
        return self.path is not None and self.path.name.endswith(f".lock.{number}")

    def _beat(self) -> None:
        import tempfile

        while not self._stop.wait(HEARTBEAT_S):
            try:
                if not self.held():
                    self.lost_to = _newest(self.root, self.study)[1] or {}
                    return  # taken over after our heartbeat went stale: never overwrite the new holder's
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps({**self.info, "heartbeat": time.time()}))
                os.replace(tmp, self.path)  # atomic: a reader sees the old heartbeat or the new, never half
            except OSError:
                pass  # a full disk or a storage hiccup: the next beat tries again

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.path is not None and self.lost_to is None:
            self.path.unlink(missing_ok=True)  # only our own generation, never a newer holder's
