"""Ray Tune's view of the sweep, in the driver process: TrackingCallback takes Ray's hooks and hands each to
the job it concerns (MLflow records, the progress display, the trials' outcomes, checkpoint clean-up, the
out-of-memory retry, settling a crash's open runs), each a small class of its own."""

from __future__ import annotations

import functools
import re
import signal
import threading
import time

from ray.tune import Callback

from studies.words import PRUNED, RUNNING
from tracking import StudyRecorder

from ..engine._outcomes import CheckpointCleanup, Outcomes
from ..engine._progress import Progress
from ..engine._states import TrialProgress, classify_error
from ..engine._trial_log import Reconciler, TrialLog
from ._asha_state import replay_rungs


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


class SweepDisplay:
    """The live progress: running and ended counts, the mean trial time and the best trial so far, on Progress's
    status line, and a line per ended trial."""

    def __init__(self, live: Progress, metric: str, searched=()):
        self.live, self.metric = live, metric
        self._searched = set(searched)
        self._started_at: dict[str, float] = {}
        self.durations: list[float] = []  # seconds each ended trial ran, in this process or before a resume

    def started(self, trial_id: str) -> None:
        if trial_id not in self._started_at:
            self._started_at[trial_id] = time.monotonic()
            self.live.summary.counts[RUNNING] += 1

    def count(self, state: str) -> None:
        self.live.summary.counts[state] += 1

    def ended(self, trial_id: str, state: str, outcomes: Outcomes) -> None:
        summary = self.live.summary
        if trial_id in self._started_at:
            summary.counts[RUNNING] -= 1
            self.durations.append(time.monotonic() - self._started_at.pop(trial_id))
            summary.mean_trial_s = sum(self.durations) / len(self.durations)
        self.count(state)
        self.best(outcomes)

    def restored(self, durations: list[float], outcomes: Outcomes) -> None:
        self.durations = durations
        for state, _ in outcomes.outcomes.values():
            self.count(state)
        if durations:
            self.live.summary.mean_trial_s = sum(durations) / len(durations)
        self.best(outcomes)

    def best(self, outcomes: Outcomes) -> None:
        summary = self.live.summary
        best = outcomes.best_trial()
        if best is not None:
            summary.best_trial, summary.best_value = best, outcomes.progress[best].best_value
            summary.best_params = {k: v for k, v in outcomes.configs[best].items() if k in self._searched}

    def event(self, trial_id: str, state: str, reason: str | None, progress: TrialProgress) -> None:
        value = "-" if progress.best_value is None else f"{progress.best_value:.4f}"
        why = f" ({reason})" if reason and state != PRUNED else ""
        self.live.event(
            f"{trial_id} {state}{why} after {progress.epochs} epochs: {self.metric}={value} | "
            + self.live.summary.best_text(with_params=False)
        )


class OomRetry:
    """After a CUDA out-of-memory failure: `retry(config)` queues the configuration again with a smaller batch
    (returning that batch size, or None where it cannot), and the failure's reason says so."""

    def __init__(self, retry=None):
        self._retry = retry

    def reason(self, config: dict, reason: str) -> str:
        if not reason.startswith("oom") or self._retry is None:
            return reason
        half = self._retry(dict(config))
        return reason if half is None else f"{reason[:400]} (retrying with batch_size={half})"


# The parts of the callback that hold this driver's handles (MLflow, the output stream, the scheduler, the
# searcher's callables): a resumed sweep is given fresh ones.
_DRIVER_ONLY = (
    "live",
    "halt",
    "scheduler",
    "error",
    "_log",
    "_display",
    "_reconcile",
    "_oom",
    "_optuna_study",
    "_note_failure",
)


class TrackingCallback(Callback):
    """Ray Tune's hooks, each handed to the jobs it concerns; `_guarded` keeps a hook's error from escaping."""

    def __init__(
        self,
        recorder: StudyRecorder,
        metric: str,
        mode: str,
        max_t: int,
        progress: Progress,
        searched=(),
        halt=None,
        keep_checkpoints: int | None = None,
        scheduler=None,
        spent_s: float = 0.0,
        lost_in_optuna=None,
        oom_retry=None,
        optuna_study=None,
        note_failure=None,
        max_seconds: float | None = None,
    ):
        self.metric = metric
        self.live = progress
        self.halt = halt  # () -> reason the whole sweep is being stopped (budget, `hpsearch stop`), or None
        self.scheduler = scheduler  # ASHA: its rungs are rebuilt on resume (Ray saves neither)
        self._optuna_study = optuna_study  # () -> the sweep's Optuna study: ASHA's rungs are rebuilt from it on resume
        self._note_failure = note_failure  # (trial_id, reason): an errored trial's reason, for the sampler's view
        self._outcomes = Outcomes(metric, mode, max_t, max_seconds)
        self._checkpoints = CheckpointCleanup(keep_checkpoints)
        self._log = TrialLog(recorder, spent_s)
        self._display = SweepDisplay(progress, metric, searched)
        self._reconcile = Reconciler(recorder, lost_in_optuna)
        self._oom = OomRetry(oom_retry)
        self.error: Exception | None = None  # the first error in a hook: the sweep ended on it (see _guarded)

    def __getstate__(self):
        # Ray pickles the callback into tuner.pkl when the sweep starts; only its plain data goes there.
        return {k: v for k, v in self.__dict__.items() if k not in _DRIVER_ONLY}

    # ---- what the engine and the sweep's finish read ----
    @property
    def progress(self) -> dict[str, TrialProgress]:
        return self._outcomes.progress

    @property
    def configs(self) -> dict[str, dict]:
        return self._outcomes.configs

    @property
    def checkpoints(self) -> dict[str, object]:
        return self._checkpoints.latest

    @property
    def lost(self) -> int:
        """Trials a crash lost: started after Ray's last saved state."""
        return self._reconcile.lost

    def best_trial(self) -> str | None:
        return self._outcomes.best_trial()

    def counts(self) -> dict[str, int]:
        return self._outcomes.counts()

    def spent_s(self) -> float:
        """Seconds this study has run, over all its resumes: what `--hours` is measured against."""
        return self._log.spent_s()

    # ---- saved with each of Ray's experiment-state snapshots, restored by `hpsearch run --resume` ----
    def get_state(self) -> dict:
        outcomes = self._outcomes
        return {
            "progress": outcomes.progress,
            "configs": outcomes.configs,
            "outcomes": outcomes.outcomes,
            "checkpoints": self._checkpoints.latest,
            "_durations": self._display.durations,
            "pending": self._log.recorder.pending(),  # the epochs of this snapshot not written to MLflow yet
        }

    def set_state(self, state: dict) -> None:
        outcomes = self._outcomes
        outcomes.progress, outcomes.configs, outcomes.outcomes = state["progress"], state["configs"], state["outcomes"]
        self._checkpoints.latest = state["checkpoints"]
        if self.scheduler is not None and self._optuna_study is not None:
            replay_rungs(self.scheduler, self._optuna_study(), self.metric)
        self._log.recorder.keep_pending(state.get("pending", {}))
        self._display.restored(state["_durations"], outcomes)

    # ---- Ray's hooks ----
    @_guarded
    def on_step_begin(self, iteration, trials, **info):
        self._reconcile(trials, self._outcomes, self._display.count)

    @_guarded
    def on_trial_start(self, iteration, trials, trial, **info):
        self._outcomes.started(trial.trial_id, trial.config)
        self._log.started(trial)
        self._display.started(trial.trial_id)

    @_guarded
    def on_step_end(self, iteration, trials, **info):
        self.live.tick()
        self._log.beat()

    @_guarded
    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._outcomes.of(trial.trial_id).update(result)
        self._log.result(trial.trial_id, result)

    @_guarded
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._checkpoints.saved(trial.trial_id, checkpoint)

    @_guarded
    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, errored=False)

    @_guarded
    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, errored=True, error=classify_error(_error_text(trial)))

    def _ended(self, trial, errored: bool, error: str | None = None) -> None:
        trial_id, outcomes = trial.trial_id, self._outcomes
        progress = outcomes.of(trial_id)
        if errored:
            error = _node_died(error, self._log.node(trial_id))
        state, reason = outcomes.decide(trial_id, trial.config, errored, error, self.halt() if self.halt else None)
        if errored:
            if self._note_failure is not None:
                self._note_failure(trial_id, reason)
            reason = self._oom.reason(trial.config, reason)
        outcomes.outcomes[trial_id] = (state, reason)
        self._log.ended(trial_id, state, reason, progress)
        self._display.ended(trial_id, state, outcomes)
        self._checkpoints.collect(outcomes)
        self._display.event(trial_id, state, reason, progress)


# How Ray reports a trial whose process it lost contact with: its node, or the process alone, went away.
_LOST_CONTACT = re.compile(
    r"ActorUnavailableError|is unavailable|ActorDiedError|RayActorError|died unexpectedly"
    r"|Socket closed|NodeDiedError|worker died"
)


def _node_died(error: str | None, node: str | None) -> str | None:
    """An error that says Ray lost contact with the trial, where its node has since left the cluster: said so."""
    if node and error and not error.startswith("node died") and _LOST_CONTACT.search(error) and node_lost(node):
        return f"node died: node {node[:8]} left the cluster ({error})"[:500]
    return error


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
