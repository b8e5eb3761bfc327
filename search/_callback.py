"""Ray Tune's view of the sweep, turned into MLflow records and progress lines, in the driver process."""

from __future__ import annotations

import functools
import re
import signal
import threading
import time

from ray.tune import Callback

from studies._better import rank_key
from tracking import StudyRecorder
from tracking import tags as T
from trainables import EPOCH, STOP_KEY

from ._asha_state import replay_rungs
from ._progress import Progress
from ._ray_reporter import NODE_KEY
from ._states import COMPLETED, FAILED, LOST, PRUNED, STOPPED, TrialProgress, classify_error

# Keys Ray adds to every result; everything else numeric that a trial reports is one of its metrics.
_RAY_KEYS = {
    "done", "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s", "pid",
    "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
    "experiment_tag", "should_checkpoint", "experiment_id", EPOCH, STOP_KEY, NODE_KEY,
}  # fmt: skip
ELAPSED_EVERY_S = 30.0


def _ask_tune_to_stop() -> bool:
    """End the sweep as Ctrl-C does: Tune's SIGUSR1 handler ends its loop and saves the experiment state, trials
    left unfinished for `--resume`. False where Tune has no handler (a sweep run outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
        return False
    signal.raise_signal(signal.SIGUSR1)
    return True


def _guarded(hook):
    """A hook's exception (a tracking write the store refused, a bug of ours) ends the sweep with its state saved,
    instead of escaping into Tune's loop, which would end it without a last snapshot. The first such error is
    kept in `callback.error` for the engine to raise once Tune has returned; later hooks still run."""

    @functools.wraps(hook)
    def guarded(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception as exc:
            if self.error is not None:
                return None
            self.error = exc
            first = (f"{type(exc).__name__}: {exc}".splitlines() or ["?"])[0][:300]
            self.live.event(f"the sweep stops on an error in {hook.__name__} ({first}); its state is being saved")
            if not _ask_tune_to_stop():
                raise
            return None

    return guarded


class TrackingCallback(Callback):
    def __init__(self, recorder: StudyRecorder, metric: str, mode: str, max_t: int, progress: Progress, searched=(),
                 halt=None, keep_checkpoints: int | None = None, scheduler=None, spent_s: float = 0.0, lost_in_optuna=None, oom_retry=None,
                 optuna_study=None, note_failure=None):  # fmt: skip
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
        self.halt = halt  # () -> reason the whole sweep is being stopped (budget, `hpsearch stop`), or None
        self.keep_checkpoints = keep_checkpoints
        self.scheduler = scheduler  # ASHA: its rungs are rebuilt on resume (Ray saves neither)
        self._spent_s, self._t0, self._last_beat = spent_s, time.monotonic(), time.monotonic()
        self._reconciled = False
        self._lost_in_optuna = lost_in_optuna  # () -> [(trial_id, params)] the searcher's restore failed
        self.lost = 0  # trials a crash lost: started after Ray's last saved state
        self._oom_retry = oom_retry  # (config) -> the halved batch size queued for a retry, or None
        self._nodes: dict[str, str] = {}  # trial_id -> the Ray node its last result came from
        self.error: Exception | None = None  # the first error in a hook: the sweep ended on it (see _guarded)
        self._optuna_study = optuna_study  # () -> the sweep's Optuna study: ASHA's rungs are rebuilt from it on resume
        self._note_failure = note_failure  # (trial_id, reason): an errored trial's reason, for the sampler's view

    def __getstate__(self):
        # Ray pickles the callback into tuner.pkl when the sweep starts. The MLflow handle, the output
        # stream and the scheduler belong to this driver process; a resumed sweep is given fresh ones.
        return {k: v for k, v in self.__dict__.items()
                if k not in ("recorder", "live", "halt", "scheduler", "_lost_in_optuna", "_oom_retry", "error",
                             "_optuna_study", "_note_failure")}  # fmt: skip

    # ---- saved with each of Ray's experiment-state snapshots, restored by `hpsearch run --resume` ----
    def get_state(self) -> dict:
        state = {k: getattr(self, k) for k in ("progress", "configs", "outcomes", "checkpoints", "_durations")}
        state["pending"] = self.recorder.pending()  # the epochs of this snapshot not written to MLflow yet
        return state

    def set_state(self, state: dict) -> None:
        for key in ("progress", "configs", "outcomes", "checkpoints", "_durations"):
            setattr(self, key, state[key])
        if self.scheduler is not None and self._optuna_study is not None:
            replay_rungs(self.scheduler, self._optuna_study(), self.metric)
        self.recorder.keep_pending(state.get("pending", {}))
        summary = self.live.summary
        for outcome, _ in self.outcomes.values():
            summary.counts[outcome] += 1
        if self._durations:
            summary.mean_trial_s = sum(self._durations) / len(self._durations)
        self._refresh_best()

    def spent_s(self) -> float:
        """Seconds this study has run, over all its resumes: what `--hours` is measured against."""
        return self._spent_s + time.monotonic() - self._t0

    @_guarded
    def on_step_begin(self, iteration, trials, **info):
        if not self._reconciled:
            self._reconciled = True
            self._reconcile(trials)

    def _reconcile(self, trials) -> None:
        """After a resume: settle the trials whose MLflow runs the interruption left open. Trials Ray will
        resume keep their runs (reattached when they restart); trials Ray knows as ended are closed with
        their outcome; trials Ray's last snapshot never saw are closed as failed, since nothing can resume them.
        """
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
                outcome = self.outcomes.get(trial_id) or self.progress.setdefault(
                    trial_id, TrialProgress(self.metric, self.mode)
                ).outcome(status == "ERROR", self._length(configs[trial_id]), "error (before the crash)")
            self._count(trial_id, outcome)
            self.recorder.close_trial(trial_id, *outcome)
        # Optuna had suggested these, but the crash came before MLflow heard of them: record them too.
        for trial_id, params in self._lost_in_optuna() if self._lost_in_optuna else []:
            if trial_id not in statuses and not self.recorder.knows(trial_id):
                self.recorder.trial_started(trial_id, params)
                self.recorder.trial_ended(trial_id, FAILED, {}, reason=LOST)
                self._count(trial_id, (FAILED, LOST))
                self.lost += 1

    def _count(self, trial_id: str, outcome: tuple[str, str | None]) -> None:
        if trial_id not in self.outcomes:
            self.outcomes[trial_id] = outcome
            self.live.summary.counts[outcome[0]] += 1

    @_guarded
    def on_trial_start(self, iteration, trials, trial, **info):
        self.configs[trial.trial_id] = dict(trial.config)
        self.progress.setdefault(trial.trial_id, TrialProgress(self.metric, self.mode))
        self.recorder.trial_started(trial.trial_id, trial.config, trial_dir=getattr(trial, "path", None))
        if trial.trial_id not in self._started_at:
            self._started_at[trial.trial_id] = time.monotonic()
            self.live.summary.counts["running"] += 1

    @_guarded
    def on_step_end(self, iteration, trials, **info):
        self.live.tick()
        if time.monotonic() - self._last_beat > ELAPSED_EVERY_S:  # so a crash loses at most this much budget
            self._last_beat = time.monotonic()
            self.recorder.set_parent_tags({T.ELAPSED: round(self.spent_s(), 1)})

    @_guarded
    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.progress.setdefault(trial.trial_id, TrialProgress(self.metric, self.mode)).update(result)
        node = result.get(NODE_KEY)
        if node and self._nodes.get(trial.trial_id) != node:  # the first result, and after a move to another node
            self._nodes[trial.trial_id] = node
            self.recorder.trial_tags(trial.trial_id, {T.NODE: node})
        metrics = {
            k: v for k, v in result.items()
            if k not in _RAY_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
        }  # fmt: skip
        metrics["time_total_s"] = result.get("time_total_s", 0.0)
        self.recorder.trial_result(trial.trial_id, int(result.get(EPOCH, 0)), metrics)

    @_guarded
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # Trials checkpoint only when their best improves, and Ray keeps one: the latest is the best.
        self.checkpoints[trial.trial_id] = checkpoint

    @_guarded
    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, errored=False)

    @_guarded
    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, errored=True, error=classify_error(_error_text(trial)))

    def _length(self, config: dict) -> int:
        """A trial's length: its own `epochs` (searched when ASHA is off), else max_t."""
        return int(config.get("epochs", self.max_t))

    def _ended(self, trial, errored: bool, error: str | None = None) -> None:
        progress = self.progress.setdefault(trial.trial_id, TrialProgress(self.metric, self.mode))
        node = self._nodes.get(trial.trial_id)
        if errored and node and error and not error.startswith("node died") and _LOST_CONTACT.search(error) \
                and node_lost(node):  # fmt: skip
            error = f"node died: node {node[:8]} left the cluster ({error})"[:500]
        state, reason = progress.outcome(errored, self._length(trial.config), error,
                                         halted=self.halt() if self.halt else None)  # fmt: skip
        if errored and self._note_failure is not None:
            self._note_failure(trial.trial_id, reason)
        if errored and reason.startswith("oom") and self._oom_retry is not None:
            half = self._oom_retry(dict(trial.config))
            if half is not None:
                reason = f"{reason[:400]} (retrying with batch_size={half})"
        self.outcomes[trial.trial_id] = (state, reason)
        summary = {T.EPOCHS: progress.epochs, T.BEST_VALUE: progress.best_value}
        if progress.best_epoch is not None:
            summary[T.BEST_EPOCH] = progress.best_epoch
        self.recorder.trial_ended(trial.trial_id, state, summary, reason=reason)
        self._update_summary(trial.trial_id, state)
        self._collect_checkpoints()
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
        self._refresh_best()

    def _refresh_best(self) -> None:
        summary = self.live.summary
        best = self.best_trial()
        if best is not None:
            summary.best_trial, summary.best_value = best, self.progress[best].best_value
            summary.best_params = {k: v for k, v in self.configs[best].items() if k in self._searched}

    def ranked(self) -> list[str]:
        """Ended trials that did not fail (completed, pruned or stopped), best first; ties keep start order."""
        candidates = [
            tid for tid, p in self.progress.items()
            if p.best_value is not None and self.outcomes.get(tid, (None,))[0] in (COMPLETED, PRUNED, STOPPED)
        ]  # fmt: skip
        return sorted(candidates, key=lambda tid: rank_key(self.progress[tid].best_value, self.mode))

    def best_trial(self) -> str | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def _collect_checkpoints(self) -> None:
        """Keep the checkpoints of the best `keep_checkpoints` ended trials (and every running trial's
        latest, which Ray manages); delete the rest as trials are beaten, so a 200-trial study holds about
        K + concurrency checkpoints."""
        if self.keep_checkpoints is None:
            return
        keep = set(self.ranked()[: self.keep_checkpoints])
        for tid in list(self.checkpoints):
            if tid in self.outcomes and tid not in keep:
                checkpoint = self.checkpoints.pop(tid)
                try:
                    checkpoint.filesystem.delete_dir(checkpoint.path)
                except (OSError, FileNotFoundError):
                    pass  # already gone: nothing to free

    def counts(self) -> dict[str, int]:
        counts = {COMPLETED: 0, PRUNED: 0, STOPPED: 0, FAILED: 0}
        for state, _ in self.outcomes.values():
            counts[state] += 1
        return counts


# How Ray reports a trial whose process it lost contact with: its node, or the process alone, went away.
_LOST_CONTACT = re.compile(r"ActorUnavailableError|is unavailable|ActorDiedError|RayActorError|died unexpectedly"
                           r"|Socket closed|NodeDiedError|worker died")


def node_lost(node_id: str, wait_s: float = 20.0) -> bool:
    """Whether the Ray node left the cluster (dead or gone). A trial's actor errors as soon as its node's
    connection drops; Ray marks the node dead a few seconds later (its health checks), so wait for that."""
    import ray

    deadline = time.monotonic() + wait_s
    while True:
        nodes = {n["NodeID"]: n.get("Alive") for n in ray.nodes()}
        if not nodes.get(node_id, False):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        if path:
            with open(path) as f:
                return f.read()
    except OSError:
        pass
    return ""
