"""How a trial ended, decided in one place for both Optuna and MLflow."""

from __future__ import annotations

import dataclasses
import math
import re

from studies.words import (
    COMPLETED,
    EPOCH,
    FAILED,
    PRUNED,
    STOP_DIVERGED,
    STOP_EARLY,
    STOP_KEY,
    STOPPED,
    TRAIN_SECONDS,
    better,
)

LOST = "lost in a crash: it started after the last saved experiment state"


@dataclasses.dataclass
class TrialProgress:
    """What the driver has seen of one trial, fed every result it reports."""

    metric: str
    mode: str
    epochs: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    stop: str | None = None
    seconds: float = 0.0  # of its own training (TRAIN_SECONDS), at its latest epoch

    def update(self, result: dict) -> None:
        self.epochs = int(result.get(EPOCH, self.epochs))
        self.seconds = float(result.get(TRAIN_SECONDS, self.seconds))
        self.stop = result.get(STOP_KEY) or self.stop
        value = result.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        if better(value, self.best_value, self.mode):
            self.best_value, self.best_epoch = float(value), self.epochs

    def outcome(
        self,
        errored: bool,
        max_t: int,
        error: str | None = None,
        halted: str | None = None,
        max_seconds: float | None = None,
    ) -> tuple[str, str | None]:
        """(state, reason). Fewer epochs than max_t (and, with `max_seconds`, ASHA's max_t under budget: seconds,
        fewer seconds of training than that), with no error and no stop of its own: ASHA pruned it, unless the
        sweep itself was halted (`halted`: the budget ran out, or `hpsearch stop`)."""
        if errored:
            return FAILED, error or "error"
        if self.stop == STOP_DIVERGED:
            return FAILED, STOP_DIVERGED
        if self.stop == STOP_EARLY:
            return COMPLETED, STOP_EARLY
        if self.epochs >= max_t or (max_seconds is not None and self.seconds >= max_seconds):
            return COMPLETED, None
        if halted:
            return STOPPED, halted
        return PRUNED, "asha" if self.epochs else "stopped before its first epoch"


_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b[^:]*:")


def classify_error(text: str) -> str:
    """A failed trial's reason from its error text: `oom`, `node died`, `worker died`, or the innermost exception's line
    (`Type: message`). Some messages go on for lines after it (CUDA's `For debugging consider passing ...`):
    the exception's own line says more than the traceback's last."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    raised = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    last = raised[-1] if raised else (lines[-1] if lines else "")
    if "OutOfMemoryError" in text or "CUDA out of memory" in text:
        return "oom: " + last[:300]
    if "NodeDiedError" in text or re.search(r"node[^.\n]*(died|dead|was killed|was terminated)", text, re.I):
        return "node died: " + last[:300]  # the machine (or its raylet) went away, not the trial's code
    if "ActorDiedError" in text or "died unexpectedly" in text or "RayActorError" in text:
        return "worker died: " + last[:300]
    return ("error: " + last)[:500] if last else "error"
