"""One sweep: validate everything (writing nothing), then Ray Tune + Optuna + ASHA, then the best
checkpoint, its servable model and one test evaluation, all recorded in MLflow."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import studies
import tracking
from studies import StudySpec, UserError
from tracking import Store, StudyRecorder, data_home
from tracking import tags as T
from trainables import Trainable, release_caches

from ..cluster._locations import Locations, resolve
from ..cluster._studylock import StudyLock, read_lock, running_error
from ..sampling._journal import journal_path, run_journal
from ..sampling._space import grid_size
from ..scheduling import _ray_start
from ._control import Interrupted, check_free_disk
from ._finish import Finished, finish, record_sweep, recorded_sweep
from ._inputs import study_trainable, trial_inputs
from ._warm import warm_points


@dataclasses.dataclass(frozen=True)
class Plan:
    """A validated study, ready to run: nothing has been written yet."""

    spec: StudySpec
    trainable: Trainable
    metric: str
    mode: str
    tracking_uri: str | None
    address: str | None
    storage: str | None
    warm_points: tuple = ()  # configurations enqueued before the sampler's own
    notes: tuple = ()  # messages for the user, printed when the run starts
    resume_run: Any = None  # --resume: the unfinished parent run (an mlflow Run) to continue
    replaces: Any = None  # --fresh: the unfinished parent run that the new one replaces
    inputs: dict = dataclasses.field(default_factory=dict)  # data_root, encoder_checkpoint: set for every trial
    locations: Locations = Locations()  # where the cluster, the tracking store and the storage are
    ship: dict | None = None  # the user's project as Ray's runtime_env, for the nodes of a cluster

    @property
    def state_root(self) -> Path:
        """The study state's folder (Optuna journal, lock, stop requests): on the shared storage if any."""
        return self.locations.state_root(data_home())


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


def plan(
    study: str,
    tracking_uri=None,
    address=None,
    storage=None,
    warm_start: str | None = None,
    warm_count: int = 5,
    resume: bool = False,
    fresh: bool = False,
    **overrides: Any,
) -> Plan:
    """Load and check a study (a built-in name or a YAML path) and the flags. Raises UserError; writes nothing."""
    if resume and fresh:
        raise UserError("--resume and --fresh: give one (continue the unfinished run, or start a new one)")
    locations = resolve(address, tracking_uri, storage)
    tracking_uri, address, storage = locations.tracking_uri, locations.address, locations.storage
    state_root = locations.state_root(data_home())  # refuses a storage that cannot hold the study's state
    if address is not None:
        # A dead head is refused now, not after minutes in ray.init.
        _ray_start.check_reachable(address, locations.origin("address"))
    spec = studies.with_overrides(studies.load_study(study), **overrides)
    source = study
    trainable, metric, mode = study_trainable(spec, source)
    if spec.resources.gpus > 0 and address is None and not os.environ.get("RAY_ADDRESS"):
        import torch

        available = torch.cuda.device_count()
        if spec.resources.gpus > available:
            raise UserError(
                f"{source}: resources.gpus: {spec.resources.gpus:g} per trial but this machine has {available} GPU(s)"
            )
    notes: list[str] = []
    if spec.sampler == "grid":
        size = grid_size(spec)
        if spec.trials > size:
            notes.append(f"grid sampler: the grid has {size} points, so {size} trials instead of {spec.trials}")
            spec = spec.model_copy(update={"trials": size})
    points: list[dict] = []
    if warm_start is not None:
        if spec.sampler == "grid":
            raise UserError("--warm-start: not with sampler grid (a grid is fixed)")
        points, messages = warm_points(spec, studies.check_name(warm_start), warm_count, tracking_uri)
        notes += messages
    if resume and points:
        raise UserError("--warm-start: not with --resume (the resumed run keeps its own queue)")
    unfinished = _unfinished_run(spec.name, tracking_uri, state_root, finishing=resume)
    if resume:
        if unfinished is None:
            raise UserError(f"--resume: study {spec.name!r} has no unfinished run to resume; run it without --resume")
        _check_resumable(spec, unfinished, tracking_uri, locations)
    elif unfinished is not None and not fresh:
        raise UserError(
            f"study {spec.name!r} has an unfinished run {unfinished.info.run_id} ({unfinished.info.run_name}, "
            f"{unfinished.info.status}): continue it with --resume, or start over with --fresh"
        )
    inputs = trial_inputs(spec, trainable, source, tracking_uri, state_root)
    check_free_disk(data_home())
    if state_root != data_home():
        check_free_disk(state_root)
    ship = None
    if address is not None or os.environ.get("RAY_ADDRESS"):
        from ..cluster._ship import project_env

        ship = project_env(trainable, [data_home(), state_root, *(Path(v) for v in inputs.values() if v)])
    return Plan(
        spec,
        trainable,
        metric,
        mode,
        tracking_uri,
        address,
        storage,
        tuple(points),
        tuple(notes),
        resume_run=unfinished if resume else None,
        replaces=unfinished if fresh else None,
        inputs=inputs,
        locations=locations,
        ship=ship,
    )


def _unfinished_run(study: str, tracking_uri: str | None, state_root: Path, finishing: bool = False):
    """The study's latest parent run if a crash (RUNNING), Ctrl-C/SIGTERM (KILLED) or an error of the engine
    (FAILED) left it unfinished; with `finishing` (a --resume), also a FINISHED run whose finishing steps are
    incomplete, which a plain run does not wait for. Raises UserError when that run is in fact alive (its lock
    has a fresh heartbeat)."""
    live = read_lock(state_root, study)
    if live is not None:
        raise running_error(study, live)
    runs = tracking.parent_runs(Store(tracking_uri), study, limit=1)
    if not runs:
        return None
    status = runs[0].info.status
    if status in ("RUNNING", "KILLED", "FAILED"):
        return runs[0]
    if finishing and status == "FINISHED" and tracking.finishing_left(runs[0].data.tags):
        return runs[0]
    return None


def _check_resumable(spec: StudySpec, run, tracking_uri: str | None, locations: Locations) -> None:
    tags = run.data.tags
    if tags.get(T.SPEC_DIGEST) != studies.spec_digest(spec):
        store = Store(tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            old = Path(store.client.download_artifacts(run.info.run_id, "study.yaml", tmp)).read_text()
        changes = studies.spec_changes(old, spec) or ["(the spec's hash differs)"]
        raise UserError(f"--resume: the study's spec changed since run {run.info.run_id}: {'; '.join(changes)}")
    experiment = tags.get(T.RAY_EXPERIMENT, "")
    started_in = experiment.rstrip("/").rsplit("/", 1)[0]
    here = locations.experiments(data_home())
    if experiment and started_in != here:
        raise UserError(
            f"--resume: run {run.info.run_id} keeps its state in storage {started_in}, but this command's storage "
            f"is {here} ({locations.origin('storage')}): resume with --storage {started_in}"
        )
    if T.SWEPT in tags:
        return  # the sweep ended: what is left (finishing) needs no state of Ray's
    if "://" not in experiment and not list(Path(experiment).glob("experiment_state-*.json")):
        raise UserError(
            f"--resume: run {run.info.run_id} saved no experiment state under {experiment or '(none)'}; "
            "start over with --fresh"
        )


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
    started = time.monotonic()
    spec = plan.spec
    store = Store(plan.tracking_uri)
    fixed = {
        **spec.fixed,
        **({"epochs": spec.max_t} if spec.asha else {}),  # max_t epochs, or max_epochs under budget: seconds
        "split_seed": spec.split_seed,
        **plan.inputs,
    }
    recorder = StudyRecorder(store, spec.name, _provenance(plan, fixed))
    release_caches()  # planning read the data set (data_info): the driver holds none of it through the sweep
    _ray_start.ready()
    cluster = None
    if plan.ship is not None or plan.address is not None or os.environ.get("RAY_ADDRESS"):
        # Join the cluster and check it before anything is recorded: resources a trial needs, storage and
        # data every node sees.
        from ..cluster._ship import check_cluster
        from ..scheduling._tune import connect

        connect(plan.address, plan.ship)
        cluster = check_cluster(plan)
    swept = plan.resume_run is not None and T.SWEPT in plan.resume_run.data.tags
    if plan.resume_run is not None:
        run = plan.resume_run
        recorder.resume(run.info.run_id)
        run_name, spent_s = run.data.tags[T.OPTUNA_STUDY], float(run.data.tags.get(T.ELAPSED, 0))
        storage = run.data.tags[T.RAY_EXPERIMENT].rstrip("/").rsplit("/", 1)[0]
        what = "finishing" if swept else "resuming"  # a sweep that had ended: its best model only, no trials
        print(f"study {spec.name}: {what} run {recorder.parent_id} ({spent_s:.0f}s spent before)", file=out)
    else:
        if plan.replaces is not None:
            _abandon(plan.replaces, store, spec.name, out)
        run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        recorder.start(_spec_params(spec, plan), studies.spec_text(spec), run_name)
        # The parent run's id makes the Ray experiment and the Optuna study unique to this invocation.
        run_name, spent_s = f"{run_name}-{recorder.parent_id[:8]}", 0.0
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
    print(f"tracking: {tracking.redacted(store.tracking_uri)}", file=out, flush=True)
    if cluster:
        print(cluster, file=out, flush=True)
    for note in plan.notes:
        print(note, file=out, flush=True)

    status, error = "FAILED", None
    try:
        callback = None
        if not swept:
            from ..scheduling._tune import run_tune

            callback = run_tune(
                plan,
                recorder,
                fixed,
                run_name,
                storage,
                store,
                out,
                resume=plan.resume_run is not None,
                spent_s=spent_s,
                lock=lock,
            )
            if callback.error is not None:
                raise callback.error  # a hook's error, raised once Tune had saved its state (scheduling/_callback.py)
        with _interruptible():
            if callback is None:
                best, counts = recorded_sweep(store, plan.resume_run)
            else:
                recorder.set_parent_tags({T.ELAPSED: round(callback.spent_s(), 1)})
                best, counts = record_sweep(recorder, callback)
            done = {} if plan.resume_run is None else plan.resume_run.data.tags
            finished = Finished() if best is None else finish(plan, store, recorder, best, done, out)
        status = "FINISHED"
        return Outcome(
            spec.name,
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


def _spec_params(spec: StudySpec, plan: Plan) -> dict[str, Any]:
    return {
        "trainable": spec.trainable,
        "metric": plan.metric,
        "mode": plan.mode,
        "trials": spec.trials,
        "hours": spec.hours,
        "max_t": spec.asha.max_t if spec.asha else spec.max_t,
        "asha": spec.asha is not None,
        # Only under seconds, so that an epochs run's params are what they were before the option existed.
        **({"budget": "seconds", "max_epochs": spec.asha.max_epochs} if spec.max_seconds else {}),
        "grace_period": spec.asha.grace_period if spec.asha else None,
        "reduction_factor": spec.asha.reduction_factor if spec.asha else None,
        "cpus_per_trial": spec.resources.cpus,
        "gpus_per_trial": spec.resources.gpus,
        "max_concurrent": spec.max_concurrent,
        "sampler": spec.sampler,
        "seed": spec.seed,
        "split_seed": spec.split_seed,
        "max_failures": spec.max_failures,
        "keep_checkpoints": spec.keep_checkpoints,
    }


def _provenance(plan: Plan, fixed: dict) -> dict[str, str]:
    from ..cluster._ship import versions

    tags = {T.SPLIT_SEED: str(plan.spec.split_seed), T.PYTHON: platform.python_version()}
    tags.update({T.VERSION + pkg: v for pkg, v in versions().items()})
    commit = _git_commit(plan.trainable.code or plan.trainable.train)
    if commit:
        tags[T.GIT_COMMIT] = commit
    if plan.trainable.data_info is not None:
        for k, v in plan.trainable.data_info(fixed).items():
            tags[T.DATA + k] = str(v)
    return tags


def _git_commit(function) -> str | None:
    """The commit of the git repository holding the trainable's code (with `-dirty` if it has uncommitted
    changes), or None where the code is not in a git repository."""
    import inspect
    import subprocess

    try:
        folder = Path(inspect.getsourcefile(function) or "").resolve().parent
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, TypeError, subprocess.SubprocessError):
        return None
