"""Everything that touches Ray: the cluster connection and the Tuner (Optuna sampler + ASHA)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import TYPE_CHECKING, TextIO

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from studies import STATES, StudySummary

from ..cluster._studylock import stop_file
from ..engine._control import Halt, Interrupted, Signals
from ..engine._progress import Progress
from ..sampling._journal import journal_path
from ..sampling._searcher import StudySearch, make_sampler
from ..sampling._space import DefineByRun, is_conditional, to_distributions
from . import _ray_start
from ._asha_state import check_replay, make_asha
from ._callback import TrackingCallback
from ._ray_reporter import make_trial_function

if TYPE_CHECKING:
    from tracking import Store, StudyRecorder

    from ..cluster._studylock import StudyLock
    from ..engine._plan import Plan


class _HideRestoreHints(logging.Filter):
    """Tune's messages on an interrupt tell the user to call Tuner.restore; hpsearch says `--resume` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("Stop signal received" in text or "Resume experiment with" in text)


logging.getLogger("ray.tune.tune").addFilter(_HideRestoreHints())


def connect(address: str | None, ship: dict | None = None, origin: str = "--address") -> None:
    """A local Ray by default (no dashboard); `address` joins an existing cluster instead, shipping the
    project (`ship`); `origin` says where the address came from. Joins the start that `hpsearch run` began in
    the background, if any."""
    if _ray_start.wait() or ray.is_initialized():
        return
    _ray_start.init_ray(address, ship, origin=origin)


def optuna_storage(journal) -> optuna.storages.BaseStorage:
    """A study's Optuna journal (one file per hpsearch study, one Optuna study per invocation in it)."""
    journal.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))


def abandon_optuna_study(journal, optuna_study: str, reason: str) -> int:
    """Fail the trials an unresumed run left RUNNING in Optuna (a --fresh run replaces it)."""
    from ..sampling._searcher import fail_running

    storage = optuna_storage(journal)
    try:
        return fail_running(optuna.load_study(study_name=optuna_study, storage=storage), reason)
    except KeyError:  # the run crashed before its Optuna study existed
        return 0


def _retry_half_batch(spec, searcher, halt, config: dict) -> int | None:
    """After a CUDA out-of-memory failure: queue the trial's configuration again with half its batch size,
    where the study searches batch_size and half is still in its range. Returns the new batch size."""
    param, batch = spec.space.get("batch_size"), config.get("batch_size")
    if param is None or param.type != "int" or not isinstance(batch, int) or halt.reason() is not None:
        return None
    half = batch // 2
    if half < param.low or (param.values is not None and half not in param.values):
        return None
    searcher.enqueue({**{k: config[k] for k in spec.space if k in config}, "batch_size": half})
    return half


@dataclasses.dataclass(frozen=True)
class _Hooks:
    """What hpsearch hands Ray Tune besides the trainable; a resumed run hands these, made afresh, in place of
    the pickled ones Ray saved."""

    searcher: StudySearch
    scheduler: ASHAScheduler | None  # None (asha: off): Ray's FIFO, every trial runs its own epochs
    callback: TrackingCallback
    halt: Halt


def run_tune(
    plan: Plan,
    recorder: StudyRecorder,
    fixed: dict,
    run_name: str,
    storage_path: str,
    store: Store,
    out: TextIO,
    resume: bool = False,
    spent_s: float = 0.0,
    lock: StudyLock | None = None,
) -> TrackingCallback:
    """Run (or, with `resume`, continue) the sweep. Raises Interrupted after Ctrl-C or SIGTERM, once Ray has
    saved the state that `hpsearch run --resume` continues from.

    `fixed` is the configuration every trial gets besides the sampled one; `run_name` names both the Ray
    experiment (a folder under `storage_path`) and the Optuna study; `spent_s` is what earlier sessions of a
    resumed run spent of the study's hours; `lock` is the study's lock, whose loss stops the sweep."""
    spec = plan.spec
    connect(plan.address)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    halt = Halt(stop_file(plan.state_root, spec.name), spec.hours, spent_s, home=store.home, lock=lock)
    searcher = _searcher(plan, run_name, halt)
    scheduler = make_asha(spec.asha) if spec.asha is not None else None
    live = Progress(_summary(plan), out)
    hooks = _Hooks(searcher, scheduler, _callback(plan, recorder, live, searcher, scheduler, halt, spent_s), halt)
    experiment = f"{storage_path.rstrip('/')}/{run_name}"
    trainable = _trainable(plan, experiment)
    # Without the auto loggers the ResultGrid (and a restore) cannot read per-trial metrics files, and says
    # so per trial; the callback already holds everything we use.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if resume:
        tuner = _restored_tuner(plan, experiment, trainable, fixed, hooks)
    else:
        tuner = _new_tuner(plan, trainable, fixed, run_name, storage_path, hooks)
    _fit(tuner, hooks, live, out)
    return hooks.callback


def _searcher(plan: Plan, run_name: str, halt: Halt) -> StudySearch:
    """Optuna behind Tune, with the warm-start configurations queued before the sampler's own."""
    spec = plan.spec
    searcher = StudySearch(
        space=DefineByRun(spec) if is_conditional(spec) else to_distributions(spec),
        metric=plan.metric,
        mode=plan.mode,
        sampler=make_sampler(spec),
        study_name=run_name,  # one Optuna study per invocation, in the study's journal file
        storage=optuna_storage(journal_path(plan.state_root, spec.name)),
        max_t=spec.max_t,
        study_seed=spec.seed,
        halt=halt.reason,
        max_seconds=spec.max_seconds,
    )
    for point in plan.warm_points:
        searcher.enqueue(point)
    return searcher


def _summary(plan: Plan) -> StudySummary:
    """The live display's starting counts (all zero) and the study's limits."""
    spec = plan.spec
    return StudySummary(
        study=spec.name,
        metric=plan.metric,
        counts={s: 0 for s in STATES},
        elapsed_s=0.0,
        trials=spec.trials,
        hours=spec.hours,
        concurrency=spec.max_concurrent,
    )


def _callback(
    plan: Plan,
    recorder: StudyRecorder,
    live: Progress,
    searcher: StudySearch,
    scheduler: ASHAScheduler | None,
    halt: Halt,
    spent_s: float,
) -> TrackingCallback:
    spec = plan.spec
    return TrackingCallback(
        recorder,
        plan.metric,
        plan.mode,
        spec.max_t,
        live,
        searched=spec.space,
        halt=halt.reason,
        keep_checkpoints=spec.keep_checkpoints,
        scheduler=scheduler,
        spent_s=spent_s,
        lost_in_optuna=lambda: getattr(searcher, "lost", []),
        oom_retry=lambda config: _retry_half_batch(spec, searcher, halt, config),
        optuna_study=lambda: searcher._ot_study,
        note_failure=searcher.note_failure,
        max_seconds=spec.max_seconds,
    )


def _trainable(plan: Plan, experiment: str):
    """The trial function with the resources each trial asks of Ray."""
    spec = plan.spec
    threads = max(1, int(spec.resources.cpus))
    per_worker = math.ceil(spec.trials / max(1, spec.max_concurrent))  # Ray reuses a worker for its next trials
    # On one machine the workers import a user's module from where hpsearch started; on a cluster from the
    # project Ray shipped (the driver's folder is not on other machines, nor first on this one's path).
    here = os.getcwd() if plan.ship is None else ""
    trial_fn = make_trial_function(spec.trainable, plan.metric, plan.mode, threads, here, experiment, per_worker)
    return tune.with_resources(trial_fn, {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus})


def _new_tuner(plan: Plan, trainable, fixed: dict, run_name: str, storage_path: str, hooks: _Hooks) -> tune.Tuner:
    spec = plan.spec
    return tune.Tuner(
        trainable,
        param_space=fixed,
        tune_config=tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            search_alg=hooks.searcher,
            scheduler=hooks.scheduler,
            num_samples=spec.trials,
            max_concurrent_trials=spec.max_concurrent,
            # --hours is enforced by `halt`, which also records why trials were cut short.
            reuse_actors=True,  # the worker's imports and data cache outlive a trial
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path,
            callbacks=[hooks.callback],
            stop=hooks.halt,
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # trials checkpoint only on improvement
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        ),
    )


def _restored_tuner(plan: Plan, experiment: str, trainable, fixed: dict, hooks: _Hooks) -> tune.Tuner:
    """Ray restores its trials (unfinished ones continue from their checkpoints) and then the searcher's and
    the callback's saved state into the objects given here: the pickled ones in tuner.pkl hold the previous
    process's handles."""
    if hooks.scheduler is not None:
        check_replay(plan.spec.asha, hooks.searcher._ot_study, plan.metric, plan.mode)
    tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, param_space=fixed)
    _replace_pickled_hooks(tuner, hooks)
    return tuner


def _replace_pickled_hooks(tuner: tune.Tuner, hooks: _Hooks) -> None:
    """Put this process's searcher, scheduler, callback and stopper in place of the ones tuner.pkl held.

    Ray 2.60's Tuner.restore takes only the trainable and the param_space; it has no public way to give these
    again, so this reaches into its private `_local_tuner` (the TunerInternal that runs in this process). A
    Ray upgrade that renames it fails the resume tests (tests/test_resume.py)."""
    internal = tuner._local_tuner
    internal._tune_config.search_alg, internal._tune_config.scheduler = hooks.searcher, hooks.scheduler
    run_config = internal.get_run_config()
    run_config.callbacks, run_config.stop = [hooks.callback], hooks.halt


def _fit(tuner: tune.Tuner, hooks: _Hooks, live: Progress, out: TextIO) -> None:
    """Run the sweep under our signal handlers, then say how it ended: early (and why), interrupted (raised,
    with the time spent), or with trials lost to a crash."""
    try:
        with Signals() as signals:
            tuner.fit()
        halted = hooks.halt.reason()
    finally:
        live.close()
        hooks.halt.close()
    if halted:
        print(f"sweep ended early: {halted}", file=out)
    if signals.received is not None:
        raise Interrupted(signals.received, hooks.callback.spent_s())
    if hooks.callback.lost:
        print(
            f"{hooks.callback.lost} trial(s) had started after the last saved state and were lost; "
            "they are recorded as failed",
            file=out,
        )
