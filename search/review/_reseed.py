"""The finalists' retrainings: `hpsearch promote STUDY --candidates K --reseeds S` or `--folds F`.

Each of the study's best K configurations is trained again, to max_t, either with S other training seeds on
the study's own splits (kind `reseed`), or once per fold of F-fold cross-validation over the pooled training
and validation splits, each fold with a seed of its own (kind `fold`, `trainables.FOLD_KEY`; stratified for
classification, the folds fixed by the study's `split_seed`). The test split is never read. The retrainings are
Ray tasks, all submitted at once with the sweep's resources per trial, so they run in parallel as far as the
cluster's free resources allow (`address`: the cluster to join; default a local Ray). Each task returns its
per-epoch results and its last (best) checkpoint; the driver records each as a child run of the study's parent
run, its checkpoint logged with it, as it arrives. A retraining already recorded for the same parent run (the
same configuration, seed and fold, FINISHED) is reused rather than run again, so a promotion run twice, or
again after a kill, trains only what is missing. A retraining that fails counts like a diverged one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import statistics
import sys
import threading
from collections.abc import Callable

import studies
import tracking
from studies import UserError
from studies.words import COMPLETED, FAILED, best_of, rank_key
from tracking import tags as T
from trainables import FOLD_KEY, fold_plan, get_trainable

RESEED, FOLD = T.RESEED_RUN, T.FOLD_RUN  # the kind of a retraining's child run
_SEED_STEP = 7919  # retraining s (or fold s-1) of a trial seeded n trains with seed n + 7919 s


@dataclasses.dataclass
class Retraining:
    """One retraining of a candidate's configuration: with a seed of its own, and with folds on one fold."""

    trial_id: str
    config: dict  # what it trains: the candidate's params with its own seed (and FOLD_KEY)
    seed: int
    fold: int | None = None  # 0-based, with folds
    folds: int | None = None
    folds_digest: str | None = None  # trainables.fold_plan's: which examples each fold holds
    value: float | None = None  # its best validation value; None: not run, failed or diverged
    run_id: str | None = None  # its child run, once recorded
    state: dict | None = None  # its best checkpoint's state_dict, once trained or loaded (`load_state`)
    seconds: float = 0.0  # training time, this promotion only (0 when reused)
    node: str | None = None  # the Ray node it trained on
    reused: bool = False

    @property
    def kind(self) -> str:
        return RESEED if self.fold is None else FOLD

    @property
    def name(self) -> str:
        return f"{self.trial_id}-seed{self.seed}" if self.fold is None else f"{self.trial_id}-fold{self.fold + 1}"

    @property
    def label(self) -> str:
        return f"seed {self.seed}" if self.fold is None else f"fold {self.fold + 1}/{self.folds} (seed {self.seed})"


@dataclasses.dataclass
class Candidate:
    trial_id: str
    params: dict
    state: str  # the original trial's: completed, pruned or stopped
    original: float | None  # the original trial's best value, whatever its state
    retrainings: list[Retraining] = dataclasses.field(default_factory=list)
    checkpoint: Callable[[], dict] | None = None  # loads the original trial's best state_dict; None: not kept
    folds: int | None = None

    @property
    def values(self) -> list[float]:
        """The evidence: with folds, one value per fold; with reseeds, the original trial's value when it ran to
        max_t (a pruned trial's is from fewer epochs than a retraining), then one per retraining seed."""
        own = [self.original] if self.folds is None and self.state == COMPLETED and self.original is not None else []
        return own + [r.value for r in self.retrainings if r.value is not None]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def _retraining():
    """The Ray task of one retraining. A closure, so Ray ships it by value: its worker imports trainables
    and torch, not this module (and MLflow with it)."""

    def hpsearch_reseed(ref: str, config: dict, seed: int, metric: str, mode: str, threads: int, cwd: str):
        import time

        import ray
        import torch

        from trainables import MemoryReporter, get_trainable

        def cpu(x):
            if isinstance(x, torch.Tensor):
                return x.detach().cpu()
            if isinstance(x, (list, tuple)):
                return type(x)(cpu(v) for v in x)
            return {k: cpu(v) for k, v in x.items()} if isinstance(x, dict) else x

        if cwd and cwd not in sys.path:  # a user's `pkg.module:function` imports from where hpsearch was started
            sys.path.insert(0, cwd)
        torch.set_num_threads(threads)
        started = time.monotonic()
        reporter = MemoryReporter(seed=seed, metric=metric, mode=mode)
        get_trainable(ref).train(config, reporter)
        model = reporter.checkpoints[-1]["model"] if reporter.checkpoints else None
        node = ray.get_runtime_context().get_node_id()
        return cpu(reporter.results), cpu(model), time.monotonic() - started, node

    return hpsearch_reseed


def find_candidates(study: str, candidates: int, tracking_uri=None, run_id=None):
    """(store, parent run, the study's best K configurations as Candidates, best first)."""
    store, parent = studies.study_run(study, tracking_uri, run_id)
    frame = studies.results(study, tracking_uri=tracking_uri, run_id=parent.info.run_id)
    ranked = frame[(frame["state"] != FAILED) & frame["metric"].notna()]
    if ranked.empty:
        raise UserError(f"study {study!r} has no completed or pruned trial to retrain (run {parent.info.run_id})")
    dirs = {r["trial_id"]: r["trial_dir"] for r in tracking.trial_rows(store, parent)}
    found = [
        Candidate(
            row["trial_id"],
            dict(row["params"]),
            row["state"],
            float(row["metric"]),
            checkpoint=original_checkpoint(store, parent, row["trial_id"], dirs.get(row["trial_id"])),
        )
        for _, row in ranked.iterrows()
    ]
    # Among trials that tie, those whose checkpoint is kept come first: the sweep's clean-up breaks ties in
    # its own order, and a tie is no reason to pick a configuration whose model is gone.
    mode = frame.attrs["mode"]
    found.sort(key=lambda c: (*rank_key(c.original, mode), c.checkpoint is None))
    return store, parent, found[:candidates]


def original_checkpoint(store, parent, trial_id: str, trial_dir: str | None) -> Callable[[], dict] | None:
    """A loader of a sweep trial's best state_dict, wherever it is kept: the study's best is logged with the
    parent run; any trial's Ray checkpoint stays in its trial folder unless `keep_checkpoints` deleted it.
    None: it is gone."""
    tags = parent.data.tags
    if tags.get(T.BEST_TRIAL) == trial_id and tags.get(T.FINISH + "checkpoint") == "done":
        return lambda: tracking.load_best_checkpoint(store, parent.info.run_id)["model"]
    folder = _ray_checkpoint(trial_dir)
    if folder is None:
        return None

    def load() -> dict:
        import torch

        saved = torch.load(folder, map_location="cpu", weights_only=True)
        return saved["model"]

    return load


def _ray_checkpoint(trial_dir: str | None):
    """The checkpoint file Ray keeps in a trial's folder (one per trial: its latest, which is its best)."""
    from pathlib import Path

    from ..scheduling._ray_reporter import CHECKPOINT_FILE

    if not trial_dir or not Path(trial_dir).is_dir():
        return None
    kept = sorted(Path(trial_dir).glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
    return kept[-1] if kept else None


def plan_retrainings(
    store, parent, found: list[Candidate], reseeds: int | None, folds: int | None, trainable
) -> str | None:
    """Each candidate's retrainings, the ones this parent run already recorded filled in (reused). Returns the
    folds' digest (None without folds)."""
    digest = None
    if folds is not None:
        try:
            digest = fold_plan(trainable, {**found[0].params}, folds)["digest"]
        except ValueError as exc:
            raise UserError(f"--folds {folds}: {exc}") from None
    recorded = _recorded(store, parent, digest)
    for candidate in found:
        candidate.folds = folds
        base = {k: v for k, v in candidate.params.items() if k != "seed"}
        for s in range(1, (folds or reseeds) + 1):
            seed = (int(candidate.params.get("seed", 0)) + _SEED_STEP * s) % 2**31
            config = {**base, FOLD_KEY: [s - 1, folds]} if folds else dict(base)
            job = Retraining(candidate.trial_id, config, seed, s - 1 if folds else None, folds, digest)
            found_run = recorded.get(_key({**config, "seed": seed}))
            if found_run is not None:
                job.run_id, job.value, job.reused = found_run
            candidate.retrainings.append(job)
    return digest


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _recorded(store, parent, digest: str | None) -> dict[str, tuple[str, float, bool]]:
    """This parent run's recorded retrainings, by exact configuration: (run id, value, True). A run a killed
    promotion left RUNNING is closed as KILLED (it is retrained)."""
    found = {}
    for run in tracking.child_runs(store, parent.info.experiment_id, parent.info.run_id):
        tags = run.data.tags
        if tags.get(T.KIND) not in (RESEED, FOLD):
            continue
        if run.info.status == "RUNNING":
            store.client.set_terminated(run.info.run_id, status="KILLED")
            continue
        if run.info.status != "FINISHED" or T.BEST_VALUE not in run.data.metrics:
            continue
        if tags.get(T.KIND) == FOLD and tags.get(T.FOLDS_DIGEST) != digest:
            continue  # folds of other data (or another k): not the same retraining
        found[tags.get(T.PARAMS, "")] = (run.info.run_id, run.data.metrics[T.BEST_VALUE], True)
    return found


def retrain_candidates(
    study: str,
    candidates: int,
    reseeds: int | None = 2,
    tracking_uri=None,
    run_id=None,
    out=None,
    address=None,
    folds: int | None = None,
):
    """Returns (store, parent run, candidates best first by mean, the chosen one). Each candidate's
    `retrainings` hold their values, run ids and (for the ones trained now) states; `compute_s` sums the
    training seconds spent now."""
    out = out or sys.stderr
    if candidates < 1 or (reseeds is not None and reseeds < 1):
        raise UserError("--candidates and --reseeds: both must be >= 1")
    if folds is not None and folds < 2:
        raise UserError(f"--folds: {folds} is not allowed: cross-validation needs at least 2 folds")
    store, parent, found = find_candidates(study, candidates, tracking_uri, run_id)
    trainable = get_trainable(parent.data.params["trainable"])
    if folds is not None and not trainable.can_fold:
        raise UserError(
            f"--folds: trainable {trainable.name} cannot be cross-validated: hpsearch cannot reach its data "
            "(a plain train(config, reporter) function); trainables.from_model gives folds, or use --reseeds"
        )
    if folds is not None:
        _own_checkpoints_kept(found, parent)
    keep = parent.data.params.get("keep_checkpoints", "3")
    for c in found if folds is None else []:
        if c.checkpoint is None and c.state == COMPLETED:
            print(
                f"  {c.trial_id}: its own checkpoint is gone (keep_checkpoints: {keep} keeps the best {keep} trials'); "
                "its retrainings' checkpoints stand in",
                file=out,
                flush=True,
            )
    digest = plan_retrainings(store, parent, found, reseeds, folds, trainable)
    _run_missing(store, parent, study, found, digest, out, address)
    ranked = sorted(found, key=lambda c: rank_key(c.mean, parent.data.tags.get(T.MODE, "max")))
    if math.isnan(ranked[0].mean):
        raise UserError("every retraining diverged or failed: nothing to compare; promote without --candidates")
    return store, parent, ranked, ranked[0]


def _own_checkpoints_kept(found: list[Candidate], parent) -> None:
    """With folds the model promoted is the winning trial's own checkpoint: one that is gone is said before
    anything trains, with the setting that keeps it."""
    gone = [c.trial_id for c in found if c.checkpoint is None]
    if gone:
        keep = parent.data.params.get("keep_checkpoints", "3")
        raise UserError(
            f"--folds promotes the winning trial's own checkpoint, and {', '.join(gone)} kept none (the study "
            f"keeps the best {keep} trials' checkpoints, keep_checkpoints: {keep}); promote fewer --candidates, "
            f"or set keep_checkpoints: {len(found)} or more in the study for its next run"
        )


def _run_missing(store, parent, study: str, found: list[Candidate], digest, out, address) -> None:
    """Trains every retraining not recorded yet, as Ray tasks in parallel, recording each as it arrives."""
    missing = [(c, r) for c in found for r in c.retrainings if not r.reused]
    metric, mode = parent.data.tags.get(T.METRIC), parent.data.tags.get(T.MODE)
    for c in found:
        for r in c.retrainings:
            if r.reused:
                print(f"  {c.trial_id} {r.label}: {metric} {r.value:.4f} (recorded)", file=out, flush=True)
    if not missing:
        return
    import ray

    from ..scheduling import _ray_start

    params = parent.data.params  # strings; the sweep's resources per trial
    ours = not ray.is_initialized()
    if ours:
        ship = None
        if address is not None or os.environ.get("RAY_ADDRESS"):  # a cluster: the user's project travels too
            from ..cluster._ship import project_env

            ship = project_env(get_trainable(params["trainable"]), [tracking.data_home()])
        _ray_start.init_ray(address, ship)
        # ray.init installs its own SIGTERM handlers (Python's, then its core worker's, which aborts): a SIGTERM
        # must end a promotion like Ctrl-C, its running retrainings cancelled and nothing left open.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.default_int_handler)
    jobs = {}
    try:
        cpus, gpus = float(params.get("cpus_per_trial") or 1), float(params.get("gpus_per_trial") or 0)
        # On one machine the workers import a user's module from here; on a cluster from the shipped project.
        here = os.getcwd() if address is None and not os.environ.get("RAY_ADDRESS") else ""
        task = ray.remote(_retraining()).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        for candidate, job in missing:
            ref = task.remote(params["trainable"], job.config, job.seed, metric, mode, max(1, int(cpus)), here)
            jobs[ref] = (candidate, job)
        while jobs:
            [ref], _ = ray.wait(list(jobs), num_returns=1)
            candidate, job = jobs.pop(ref)
            _arrived(store, parent, study, job, ref, metric, mode, out)
    finally:
        for ref in jobs:  # interrupted: the retrainings still running are cancelled, not left to run on
            ray.cancel(ref, force=True)
        if ours:
            ray.shutdown()


def _arrived(store, parent, study: str, job: Retraining, ref, metric: str, mode: str, out) -> None:
    import ray

    try:
        results, model, job.seconds, job.node = ray.get(ref)
    except Exception as exc:  # the trainable raised, or its worker died
        last = ([line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__])[-1]
        print(f"  {job.trial_id} {job.label}: failed: {last.strip()}", file=out, flush=True)
        return
    value = best_of((r[metric] for r in results if metric in r), mode)
    if value is None:
        print(f"  {job.trial_id} {job.label}: no {metric} (diverged)", file=out, flush=True)
        return
    job.value, job.state = value, model
    job.run_id = _record(store, parent, study, job, results, metric, mode)
    print(f"  {job.trial_id} {job.label}: {metric} {value:.4f} ({job.seconds:.0f}s)", file=out, flush=True)


def _record(store, parent, study: str, job: Retraining, results: list[dict], metric: str, mode: str) -> str:
    """One retraining as a child run of the study's parent run (kind `reseed` or `fold`), its best checkpoint
    logged with it; returns its run id. It is FINISHED only once all of it is written, so that a later
    promotion reuses only complete records; an interruption in between leaves it KILLED."""
    recorder = tracking.StudyRecorder(store, study, {})
    recorder.attach(parent)
    config = {**job.config, "seed": job.seed}
    tags = {T.RESEED_OF: job.trial_id, T.NODE: job.node or ""}
    if job.fold is not None:
        tags |= {T.FOLD_OF: f"{job.fold + 1}/{job.folds}", T.FOLDS_DIGEST: job.folds_digest}
    run_id = recorder.trial_started(job.name, config, kind=job.kind, tags=tags)
    try:
        for i, result in enumerate(results):
            metrics = {
                k: v
                for k, v in result.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"
            }
            recorder.trial_result(job.name, int(result.get("epoch", i + 1)), metrics)
        if job.state is not None:
            payload = {"model": job.state, "config": config, "metric": metric, "mode": mode, "value": job.value}
            tracking.log_best_checkpoint(store, run_id, {**payload, "trial_id": job.trial_id})
        recorder.trial_ended(job.name, COMPLETED, {T.BEST_VALUE: job.value})
    except BaseException:
        store.client.set_terminated(run_id, status="KILLED")
        raise
    return run_id


def load_state(store, job: Retraining) -> dict | None:
    """A retraining's best state_dict: the one trained now, or the one logged with its run."""
    if job.state is None and job.run_id is not None:
        try:
            job.state = tracking.load_best_checkpoint(store, job.run_id)["model"]
        except Exception:
            return None
    return job.state
