"""One sweep, once planned (engine/_plan.py): Ray Tune + Optuna + ASHA, then the best
checkpoint, its servable model and one test evaluation, all recorded in MLflow."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Any

import studies
import tracking
from tracking import Store, StudyRecorder, data_home
from tracking import tags as T
from trainables import release_caches

from ..cluster._studylock import StudyLock
from ..sampling._journal import journal_path, run_journal
from ..scheduling import _ray_start
from ._control import Interrupted
from ._finish import Finished, finish, record_sweep, recorded_sweep
from ._plan import Plan
from ._provenance import provenance, spec_params


@dataclasses.dataclass
class Outcome:
    study: str
    run_id: str
    best_trial: str | None
    best_value: float | None
    metric: str
    counts: dict[str, int]
    test_metrics: dict[str, float]
    model_uri: str | None
    seconds: float
    finishing_left: list[str] = dataclasses.field(default_factory=list)  # finishing steps that failed (--resume)

    @property
    def exit_code(self) -> int:
        return 0 if self.best_trial else 1


def execute(plan: Plan, out=None) -> Outcome:
    """Run the sweep (or continue an unfinished one). Every record goes to MLflow from this (the driver)
    process. Raises Interrupted after Ctrl-C or SIGTERM, with the run left for `--resume`."""
    out = out or sys.stdout
    lock = StudyLock(plan.state_root, plan.spec.name).acquire()
    try:
        return _execute(plan, out, lock)
    finally:
        lock.release()


def _execute(plan: Plan, out, lock: StudyLock | None = None) -> Outcome:
    """The sweep, then its finishing, with the parent run's status set however it ends: FINISHED, KILLED (a
    signal: resumable), or FAILED (an error: resumable once fixed)."""
    started = time.monotonic()
    spec = plan.spec
    store = Store(plan.tracking_uri)
    fixed = _fixed(plan)
    recorder = StudyRecorder(store, spec.name, provenance(plan, fixed))
    release_caches()  # planning read the data set (data_info): the driver holds none of it through the sweep
    _ray_start.ready()
    cluster = _join_cluster(plan)
    swept = plan.resume_run is not None and T.SWEPT in plan.resume_run.data.tags
    if plan.resume_run is not None:
        run_name, storage, spent_s = _continue_run(plan, recorder, swept, out)
    else:
        run_name, storage, spent_s = _start_run(plan, store, recorder, out)
    print(f"tracking: {tracking.redacted(store.tracking_uri)}", file=out, flush=True)
    for line in ([cluster] if cluster else []) + list(plan.notes):
        print(line, file=out, flush=True)
    status, error = "FAILED", None
    try:
        callback = None
        if not swept:
            from ..scheduling._tune import run_tune

            resume = plan.resume_run is not None
            callback = run_tune(plan, recorder, fixed, run_name, storage, store, out, resume, spent_s, lock)
            if callback.error is not None:
                raise callback.error  # a hook's error, raised once Tune had saved its state (scheduling/_callback.py)
        outcome = _finish_sweep(plan, store, recorder, callback, out, started)
        status = "FINISHED"
        return outcome
    except Interrupted as exc:
        status = "KILLED"
        _signal, spent = exc.args
        recorder.set_parent_tags({T.ELAPSED: round(spent, 1)})
        raise Interrupted(
            f"study {spec.name} interrupted; its state is saved: continue with `hpsearch run {plan.spec.name} "
            "--resume` (same spec file and flags)"
        ) from None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM after the sweep: while its best model was being finished
        status = "KILLED"
        raise Interrupted(
            f"study {spec.name} interrupted while finishing; the sweep's results are recorded: complete it with "
            f"`hpsearch run {plan.spec.name} --resume`"
        ) from None
    except Exception as exc:
        error = exc
        print(
            f"study {spec.name}: stopped by an error (below); its trials are kept: continue with `hpsearch run "
            f"{spec.name} --resume` once it is fixed",
            file=out,
            flush=True,
        )
        raise
    finally:
        _end_run(recorder, status, error, out)


def _fixed(plan: Plan) -> dict[str, Any]:
    """What every trial gets besides its sampled configuration."""
    spec = plan.spec
    return {
        **spec.fixed,
        **({"epochs": spec.max_t} if spec.asha else {}),  # max_t epochs, or max_epochs under budget: seconds
        "split_seed": spec.split_seed,
        **plan.inputs,
    }


def _join_cluster(plan: Plan) -> str | None:
    """On a cluster: join it and check it before anything is recorded (resources a trial needs, storage and data
    every node sees); returns what to say about it. None on this machine alone."""
    if plan.ship is None and plan.address is None and not os.environ.get("RAY_ADDRESS"):
        return None
    from ..cluster._ship import check_cluster
    from ..scheduling._tune import connect

    connect(plan.address, plan.ship, plan.locations.origin("address"))
    return check_cluster(plan)


def _continue_run(plan: Plan, recorder: StudyRecorder, swept: bool, out) -> tuple[str, str, float]:
    """--resume: reopen the unfinished parent run; (its Ray experiment's name, its storage, seconds spent)."""
    run = plan.resume_run
    recorder.resume(run.info.run_id)
    run_name, spent_s = run.data.tags[T.OPTUNA_STUDY], float(run.data.tags.get(T.ELAPSED, 0))
    storage = run.data.tags[T.RAY_EXPERIMENT].rstrip("/").rsplit("/", 1)[0]
    what = "finishing" if swept else "resuming"  # a sweep that had ended: its best model only, no trials
    print(f"study {plan.spec.name}: {what} run {recorder.parent_id} ({spent_s:.0f}s spent before)", file=out)
    return run_name, storage, spent_s


def _start_run(plan: Plan, store: Store, recorder: StudyRecorder, out) -> tuple[str, str, float]:
    """A new parent run (closing the one a --fresh replaces); (its Ray experiment's name, its storage, 0 s)."""
    spec = plan.spec
    if plan.replaces is not None:
        _abandon(plan.replaces, store, spec.name, out)
    run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    recorder.start(spec_params(spec, plan), studies.spec_text(spec), run_name)
    # The parent run's id makes the Ray experiment and the Optuna study unique to this invocation.
    run_name = f"{run_name}-{recorder.parent_id[:8]}"
    storage = plan.locations.experiments(data_home())
    recorder.set_parent_tags(
        {
            T.METRIC: plan.metric,
            T.MODE: plan.mode,
            T.OPTUNA_STUDY: run_name,
            T.RAY_EXPERIMENT: f"{storage.rstrip('/')}/{run_name}",
            T.OPTUNA_JOURNAL: str(journal_path(plan.state_root, spec.name)),
            T.SPEC_DIGEST: studies.spec_digest(spec),
        }
    )
    print(f"study {spec.name}: {spec.trials} trials of {plan.trainable.name}, run {recorder.parent_id}", file=out)
    return run_name, storage, 0.0


def _finish_sweep(plan: Plan, store: Store, recorder: StudyRecorder, callback, out, started: float) -> Outcome:
    """Record the sweep's end (or, with no `callback`, read what an earlier session recorded) and finish its best
    trial; a signal here raises KeyboardInterrupt, so the run stays resumable."""
    with _interruptible():
        if callback is None:
            best, counts = recorded_sweep(store, plan.resume_run)
        else:
            recorder.set_parent_tags({T.ELAPSED: round(callback.spent_s(), 1)})
            best, counts = record_sweep(recorder, callback)
        done = {} if plan.resume_run is None else plan.resume_run.data.tags
        finished = Finished() if best is None else finish(plan, store, recorder, best, done, out)
    return Outcome(
        plan.spec.name,
        recorder.parent_id,
        None if best is None else best.trial_id,
        None if best is None else best.value,
        plan.metric,
        counts,
        finished.test_metrics,
        finished.model_uri,
        time.monotonic() - started,
        finished.left,
    )


def _end_run(recorder, status: str, error: BaseException | None, out) -> None:
    """Mark the parent run with its status. When the run is already ending on an error, a second one here (the
    store that failed the sweep failing again) is said in a line and the first is the one raised."""
    try:
        recorder.finish(status)
    except Exception as exc:
        if error is None:
            raise
        first = (f"{type(exc).__name__}: {exc}".splitlines() or ["?"])[0][:300]
        print(f"(recording the run's end failed too: {first}; the error below is the cause)", file=out, flush=True)


@contextlib.contextmanager
def _interruptible():
    """After the sweep (where Signals in _tune.py handles them): SIGTERM, like Ctrl-C, raises KeyboardInterrupt,
    so a kill while the best model is finished leaves the run KILLED and resumable, not RUNNING. Ray's own
    SIGTERM handler (sys.exit) would mark it FAILED."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _abandon(run, store, study: str, out) -> None:
    """--fresh: close the unfinished run it replaces, in MLflow and in Optuna, so nothing stays RUNNING."""
    from ..scheduling._tune import abandon_optuna_study

    reason = "not resumed: a --fresh run replaced it"
    closed = tracking.close_unfinished(store, run.info.run_id, reason)
    optuna_study = run.data.tags.get(T.OPTUNA_STUDY)
    if optuna_study:
        abandon_optuna_study(run_journal(run, data_home()), optuna_study, reason)
    print(f"closed unfinished run {run.info.run_id} ({closed} open trial(s) marked failed)", file=out)
