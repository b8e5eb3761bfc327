"""One study's state at a glance: the same summary for live progress (`hpsearch run`) and `hpsearch show`."""

from __future__ import annotations

import dataclasses
from typing import Any

from .words import RUNNING, STATES


@dataclasses.dataclass
class StudySummary:
    study: str
    metric: str
    counts: dict[str, int]  # by state, running included
    elapsed_s: float
    trials: int  # the budget in trials
    hours: float | None = None  # the budget in hours
    concurrency: int = 1
    best_value: float | None = None
    best_trial: str | None = None
    best_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    mean_trial_s: float | None = None  # mean wall time of finished trials
    disk_bytes: int | None = None  # the study's checkpoints and artifacts on local disk

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s, 0) for s in STATES[1:])

    def eta_s(self) -> float | None:
        """Seconds until the budget is spent: remaining trials at the observed pace, capped by the hours."""
        left = max(self.trials - self.finished, 0)
        if left == 0:
            return 0.0
        estimates = []
        if self.mean_trial_s:
            running = self.counts.get(RUNNING, 0)
            estimates.append(self.mean_trial_s * (left - running / 2) / max(self.concurrency, 1))
        if self.hours:
            estimates.append(max(self.hours * 3600 - self.elapsed_s, 0.0))
        return max(min(estimates), 0.0) if estimates else None

    def counts_text(self) -> str:
        return ", ".join(f"{self.counts.get(s, 0)} {s}" for s in STATES)

    def best_text(self, with_params: bool = True) -> str:
        if self.best_value is None:
            return "best: none yet"
        text = f"best {self.metric}={self.best_value:.4f} (trial {self.best_trial})"
        if with_params and self.best_params:
            text += " " + " ".join(f"{k}={short_value(v)}" for k, v in sorted(self.best_params.items()))
        return text

    def budget_text(self) -> str:
        left = max(self.trials - self.finished, 0)
        text = f"{_duration(self.elapsed_s)} elapsed, {left} of {self.trials} trials left"
        if self.hours:
            text += f", {_duration(max(self.hours * 3600 - self.elapsed_s, 0))} of {self.hours:g}h left"
        eta = self.eta_s()
        return text + (f", ETA {_duration(eta)}" if eta is not None and left else "")

    def line(self) -> str:
        """One line, for a status bar or a log."""
        return f"{self.counts_text()} | {self.best_text(with_params=False)} | {self.budget_text()}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def headline(metrics: dict[str, float]) -> str:
    """`k=v, ...` for one line: per-class values (`test_accuracy_class_7`, up to 102 of them) stay in MLflow."""
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if "_class_" not in k)


def short_value(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
