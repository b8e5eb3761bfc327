"""The sweep's MLflow records as Ray Tune reports on its trials, and the runs a crash left open, settled on
`--resume`. Both write through the study's StudyRecorder, a driver-only handle."""

from __future__ import annotations

import time

from studies.words import EPOCH, FAILED, NODE_KEY, STOP_KEY
from tracking import StudyRecorder
from tracking import tags as T

from ._outcomes import Outcomes
from ._states import LOST, TrialProgress

# Keys Ray adds to every result; everything else numeric that a trial reports is one of its metrics.
_RAY_KEYS = {
    "done",
    "training_iteration",
    "trial_id",
    "date",
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "hostname",
    "node_ip",
    "config",
    "time_since_restore",
    "iterations_since_restore",
    "checkpoint_dir_name",
    "experiment_tag",
    "should_checkpoint",
    "experiment_id",
    EPOCH,
    STOP_KEY,
    NODE_KEY,
}
ELAPSED_EVERY_S = 30.0


class TrialLog:
    """Each trial's MLflow run (its start, every epoch's metrics, its node, its end), and the sweep's elapsed
    time on the parent run, so that a crash loses at most ELAPSED_EVERY_S of the `--hours` budget."""

    def __init__(self, recorder: StudyRecorder, spent_s: float = 0.0):
        self.recorder = recorder
        self._spent_s, self._t0, self._last_beat = spent_s, time.monotonic(), time.monotonic()
        self._nodes: dict[str, str] = {}  # trial_id -> the Ray node its last result came from

    def spent_s(self) -> float:
        """Seconds this study has run, over all its resumes: what `--hours` is measured against."""
        return self._spent_s + time.monotonic() - self._t0

    def beat(self) -> None:
        if time.monotonic() - self._last_beat > ELAPSED_EVERY_S:
            self._last_beat = time.monotonic()
            self.recorder.set_parent_tags({T.ELAPSED: round(self.spent_s(), 1)})

    def node(self, trial_id: str) -> str | None:
        return self._nodes.get(trial_id)

    def started(self, trial) -> None:
        self.recorder.trial_started(trial.trial_id, trial.config, trial_dir=getattr(trial, "path", None))

    def result(self, trial_id: str, result: dict) -> None:
        node = result.get(NODE_KEY)
        if node and self._nodes.get(trial_id) != node:  # the first result, and after a move to another node
            self._nodes[trial_id] = node
            self.recorder.trial_tags(trial_id, {T.NODE: node})
        metrics = {
            k: v
            for k, v in result.items()
            if k not in _RAY_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        metrics["time_total_s"] = result.get("time_total_s", 0.0)
        self.recorder.trial_result(trial_id, int(result.get(EPOCH, 0)), metrics)

    def ended(self, trial_id: str, state: str, reason: str | None, progress: TrialProgress) -> None:
        summary = {T.EPOCHS: progress.epochs, T.BEST_VALUE: progress.best_value}
        if progress.best_epoch is not None:
            summary[T.BEST_EPOCH] = progress.best_epoch
        if progress.seconds:
            summary[T.TRAIN_SECONDS] = round(progress.seconds, 2)
        self.recorder.trial_ended(trial_id, state, summary, reason=reason)


class Reconciler:
    """After a resume: settle the trials whose MLflow runs the interruption left open. Trials Ray will resume
    keep their runs (reattached when they restart); trials Ray knows as ended are closed with their outcome;
    trials Ray's last snapshot never saw are closed as failed, since nothing can resume them."""

    def __init__(self, recorder: StudyRecorder, lost_in_optuna=None):
        self.recorder = recorder
        self._lost_in_optuna = lost_in_optuna  # () -> [(trial_id, params)] the searcher's restore failed
        self.done = False
        self.lost = 0  # trials a crash lost: started after Ray's last saved state

    def __call__(self, trials, outcomes: Outcomes, count) -> None:
        """Once, at the sweep's first step; `count(state)` tells the display of each outcome settled here."""
        if self.done:
            return
        self.done = True
        statuses = {t.trial_id: t.status for t in trials}
        configs = {t.trial_id: t.config for t in trials}
        for trial_id in self.recorder.unfinished_trials():
            status = statuses.get(trial_id)
            if status in ("PENDING", "PAUSED", "RUNNING"):
                continue  # resumes from its checkpoint
            if status is None:
                outcome = (FAILED, LOST)
                self.lost += 1
            else:
                outcome = outcomes.outcomes.get(trial_id) or outcomes.decide(
                    trial_id, configs[trial_id], status == "ERROR", "error (before the crash)"
                )
            if outcomes.settle(trial_id, outcome):
                count(outcome[0])
            self.recorder.close_trial(trial_id, *outcome)
        # Optuna had suggested these, but the crash came before MLflow heard of them: record them too.
        for trial_id, params in self._lost_in_optuna() if self._lost_in_optuna else []:
            if trial_id not in statuses and not self.recorder.knows(trial_id):
                self.recorder.trial_started(trial_id, params)
                self.recorder.trial_ended(trial_id, FAILED, {}, reason=LOST)
                if outcomes.settle(trial_id, (FAILED, LOST)):
                    count(FAILED)
                self.lost += 1
