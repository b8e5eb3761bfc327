"""Live progress of `hpsearch run`: a status line refreshed in place on a terminal; elsewhere (a log file,
CI) one line per finished trial plus a summary at most every `heartbeat_s`, so the log never floods."""

from __future__ import annotations

import sys
import time

from studies import StudySummary

REFRESH_S = 1.0  # status-line redraws on a terminal, at most once a second
HEARTBEAT_S = 60.0  # summary lines in a log, at most once a minute


class Progress:
    def __init__(self, summary: StudySummary, out=None, tty: bool | None = None, heartbeat_s: float = HEARTBEAT_S):
        self.summary = summary
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.heartbeat_s = heartbeat_s
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_heartbeat = time.monotonic()
        self._status_shown = False

    def event(self, text: str) -> None:
        """A finished trial (or another event worth a line of its own)."""
        self.summary.elapsed_s = time.monotonic() - self.started
        done = self.summary.finished
        line = f"[{done:>3}/{self.summary.trials}] {text} | {self.summary.counts_text()}"
        if self.tty:
            self._write("\r\x1b[2K" + line + "\n")
            self._draw(force=True)
        else:
            self._write(line + "\n")

    def tick(self) -> None:
        """Called often (every Tune loop step); does something at most once per interval."""
        now = time.monotonic()
        self.summary.elapsed_s = now - self.started
        if self.tty:
            self._draw()
        elif now - self._last_heartbeat >= self.heartbeat_s:
            self._last_heartbeat = now
            self._write(f"... {self.summary.line()}\n")

    def close(self) -> None:
        if self.tty and self._status_shown:
            self._write("\r\x1b[2K")

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < REFRESH_S:
            return
        self._last_draw = now
        self._status_shown = True
        self._write("\r\x1b[2K" + self.summary.line()[:200])

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
