"""Ray Tune's view of the sweep, turned into MLflow records and progress lines, in the driver process."""

from __future__ import annotations

import time

from ray.tune import Callback

from tracking import StudyRecorder
from tracking import tags as T
from trainables import EPOCH, STOP_KEY

from ._progress import Progress
from ._states import COMPLETED, FAILED, PRUNED, TrialProgress

# Keys Ray adds to every result; everything else numeric that a trial reports is one of its metrics.
_RAY_KEYS = {
    "done", "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s", "pid",
    "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
    "experiment_tag", "should_checkpoint", "experiment_id", EPOCH, STOP_KEY,
}  # fmt: skip


class TrackingCallback(Callback):
    def __init__(self, recorder: StudyRecorder, metric: str, mode: str, max_t: int, progress: Progress, searched=()):
        self.recorder = recorder
        self.metric, self.mode, self.max_t = metric, mode, max_t
        self.live = progress
        self._started_at: dict[str, float] = {}
        self._durations: list[float] = []
        self.progress: dict[str, TrialProgress] = {}
        self.configs: dict[str, dict] = {}
        self.outcomes: dict[str, tuple[str, str | None]] = {}
        self.checkpoints: dict[str, object] = {}  # trial_id -> its latest (= best) ray Checkpoint
        self._searched = set(searched)

    def __getstate__(self):
        # Ray pickles callbacks into its experiment-state snapshots. The MLflow handle and the output
        # stream belong to this driver process only; a resumed sweep is given fresh ones.
        return {k: v for k, v in self.__dict__.items() if k not in ("recorder", "live")}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.configs[trial.trial_id] = dict(trial.config)
        self.progress.setdefault(trial.trial_id, TrialProgress(self.metric, self.mode))
        self.recorder.trial_started(trial.trial_id, trial.config)
        if trial.trial_id not in self._started_at:
            self._started_at[trial.trial_id] = time.monotonic()
            self.live.summary.counts["running"] += 1

    def on_step_end(self, iteration, trials, **info):
        self.live.tick()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.progress.setdefault(trial.trial_id, TrialProgress(self.metric, self.mode)).update(result)
        metrics = {
            k: v for k, v in result.items()
            if k not in _RAY_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
        }  # fmt: skip
        metrics["time_total_s"] = result.get("time_total_s", 0.0)
        self.recorder.trial_result(trial.trial_id, int(result.get(EPOCH, 0)), metrics)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # Trials checkpoint only when their best improves, and Ray keeps one: the latest is the best.
        self.checkpoints[trial.trial_id] = checkpoint

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, errored=True, error=_error_line(trial))

    def _ended(self, trial, errored: bool, error: str | None = None) -> None:
        progress = self.progress.setdefault(trial.trial_id, TrialProgress(self.metric, self.mode))
        state, reason = progress.outcome(errored, self.max_t, error)
        self.outcomes[trial.trial_id] = (state, reason)
        summary = {T.EPOCHS: progress.epochs, T.BEST_VALUE: progress.best_value}
        if progress.best_epoch is not None:
            summary[T.BEST_EPOCH] = progress.best_epoch
        self.recorder.trial_ended(trial.trial_id, state, summary, reason=reason)
        self._update_summary(trial.trial_id, state)
        value = "-" if progress.best_value is None else f"{progress.best_value:.4f}"
        why = f" ({reason})" if reason and state != PRUNED else ""
        self.live.event(
            f"{trial.trial_id} {state}{why} after {progress.epochs} epochs: {self.metric}={value} | "
            + self.live.summary.best_text(with_params=False)
        )

    def _update_summary(self, trial_id: str, state: str) -> None:
        summary = self.live.summary
        if trial_id in self._started_at:
            summary.counts["running"] -= 1
            self._durations.append(time.monotonic() - self._started_at.pop(trial_id))
            summary.mean_trial_s = sum(self._durations) / len(self._durations)
        summary.counts[state] += 1
        best = self.best_trial()
        if best is not None:
            summary.best_trial, summary.best_value = best, self.progress[best].best_value
            summary.best_params = {k: v for k, v in self.configs[best].items() if k in self._searched}

    def best_trial(self) -> str | None:
        """The trial with the best value among those that did not fail (completed or pruned)."""
        candidates = [
            (p.best_value, tid) for tid, p in self.progress.items()
            if p.best_value is not None and self.outcomes.get(tid, (None,))[0] in (COMPLETED, PRUNED)
        ]  # fmt: skip
        if not candidates:
            return None
        pick = max if self.mode == "max" else min
        return pick(candidates, key=lambda c: c[0])[1]

    def counts(self) -> dict[str, int]:
        counts = {COMPLETED: 0, PRUNED: 0, FAILED: 0}
        for state, _ in self.outcomes.values():
            counts[state] += 1
        return counts


def _error_line(trial) -> str:
    text = ""
    path = getattr(trial, "error_file", None)
    try:
        if path:
            with open(path) as f:
                text = f.read()
    except OSError:
        pass
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return ("error: " + lines[-1])[:500] if lines else "error"
