"""`hpsearch promote STUDY --candidates K --reseeds S`: promotion that does not trust one lucky seed.

Each of the study's best K configurations is trained again, to max_t, with S other training seeds (same
data splits, validation as always, the test split untouched). The K*S retrainings are Ray tasks, all
submitted at once with the sweep's resources per trial (`cpus_per_trial`, `gpus_per_trial`), so they run
in parallel as far as the cluster's free resources allow (`address`: the cluster to join; default a local
Ray). Each task resolves the trainable in its worker and returns its per-epoch results and last (best)
checkpoint; the driver records each as a child run of the study's parent run (kind `reseed`) as it
arrives. A retraining that fails counts like a diverged one. The configuration with the best mean
validation value over its retrainings (and its original trial, if that ran to max_t) wins; its best
checkpoint is tested once, by the driver (cached by digest), and is what gets registered.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys

import studies
import tracking
from studies import UserError
from studies._better import best_of, better, rank_key
from tracking import tags as T
from trainables import get_trainable

RESEED = "reseed"  # the hpsearch.kind of a retraining's child run
RESEED_OF = "hpsearch.reseed_of"  # the trial whose configuration it retrains


@dataclasses.dataclass
class Candidate:
    trial_id: str
    params: dict
    values: list[float]  # the original trial's best if it ran to max_t, then one per retraining seed
    best_value: float | None
    best: dict | None = None  # the best retraining's checkpoint payload (None: the original trial is best)
    best_run: str | None = None  # its child run

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
        return cpu(reporter.results), cpu(model), time.monotonic() - started

    return hpsearch_reseed


def retrain_candidates(
    study: str, candidates: int, reseeds: int, tracking_uri=None, run_id=None, out=None, address=None
):
    """Returns (store, parent run, candidates best first by mean, the chosen one)."""
    out = out or sys.stderr
    if candidates < 1 or reseeds < 1:
        raise UserError("--candidates and --reseeds: both must be >= 1")
    store, parent = studies.study_run(study, tracking_uri, run_id)
    frame = studies.results(study, tracking_uri=tracking_uri, run_id=parent.info.run_id)
    metric, mode = frame.attrs["metric"], frame.attrs["mode"]
    top = frame[(frame["state"] != "failed") & frame["metric"].notna()].head(candidates)
    if top.empty:
        raise UserError(f"study {study!r} has no completed or pruned trial to retrain (run {parent.info.run_id})")
    found: list[Candidate] = []
    for _, row in top.iterrows():
        # A pruned or stopped trial's value is from fewer epochs than a retraining runs: it does not count.
        original = float(row["metric"]) if row["state"] == "completed" else None
        found.append(Candidate(row["trial_id"], dict(row["params"]), [] if original is None else [original], original))

    import ray

    from . import _ray_start

    ours = not ray.is_initialized()
    if ours:
        ship = None
        if address is not None or os.environ.get("RAY_ADDRESS"):  # a cluster: the user's project travels too
            from ._cluster import project_env

            ship = project_env(get_trainable(parent.data.params["trainable"]), [tracking.data_home()])
        _ray_start.init_ray(address, ship)
    try:
        params = parent.data.params  # strings; the sweep's resources per trial
        cpus, gpus = float(params.get("cpus_per_trial") or 1), float(params.get("gpus_per_trial") or 0)
        # On one machine the workers import a user's module from here; on a cluster from the shipped project.
        here = os.getcwd() if address is None and not os.environ.get("RAY_ADDRESS") else ""
        task = ray.remote(_retraining()).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        jobs = {}
        for candidate in found:
            config = {k: v for k, v in candidate.params.items() if k != "seed"}
            for s in range(1, reseeds + 1):
                seed = (int(candidate.params.get("seed", 0)) + 7919 * s) % 2**31
                job = task.remote(params["trainable"], config, seed, metric, mode, max(1, int(cpus)), here)
                jobs[job] = (candidate, s, seed)
        retrained = {c.trial_id: [None] * reseeds for c in found}  # values in seed order, whatever finishes first
        held = {c.trial_id: (c.best_value, 0) for c in found if c.best_value is not None}  # best (value, seed index)
        while jobs:
            [job], _ = ray.wait(list(jobs), num_returns=1)
            candidate, s, seed = jobs.pop(job)
            try:
                results, model, seconds = ray.get(job)
            except Exception as exc:  # the trainable raised, or its worker died
                last = ([line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__])[-1]
                print(f"  {candidate.trial_id} seed {seed}: failed: {last.strip()}", file=out, flush=True)
                continue
            value = best_of((r[metric] for r in results if metric in r), mode)
            if value is None:
                print(f"  {candidate.trial_id} seed {seed}: no {metric} (diverged)", file=out, flush=True)
                continue
            config = {**candidate.params, "seed": seed}
            child = _record(store, parent, study, candidate.trial_id, config, results, value)
            retrained[candidate.trial_id][s - 1] = value
            # Ties go to the original trial, then to the lower seed index: the same choice in any order.
            was, was_s = held.get(candidate.trial_id, (None, 0))
            if model is not None and (better(value, was, mode) or (value == was and s < was_s)):
                held[candidate.trial_id] = (value, s)
                candidate.best_value, candidate.best_run = value, child
                candidate.best = {
                    "model": model,
                    "config": config,
                    "metric": metric,
                    "mode": mode,
                    "value": value,
                    "trial_id": candidate.trial_id,
                }
            print(f"  {candidate.trial_id} seed {seed}: {metric} {value:.4f} ({seconds:.0f}s)", file=out, flush=True)
    finally:
        if ours:
            ray.shutdown()
    for candidate in found:
        candidate.values += [v for v in retrained[candidate.trial_id] if v is not None]
    ranked = sorted(found, key=lambda c: rank_key(c.mean, mode))
    if math.isnan(ranked[0].mean):
        raise UserError("every retraining diverged or failed: nothing to compare; promote without --candidates")
    return store, parent, ranked, ranked[0]


def _record(store, parent, study: str, trial_id: str, config: dict, results: list[dict], value: float) -> str:
    """One retraining as a child run of the study's parent run, kind `reseed`; returns its run id."""
    recorder = tracking.StudyRecorder(store, study, {})
    recorder.attach(parent)
    name = f"{trial_id}-seed{config['seed']}"
    run_id = recorder.trial_started(name, config, kind=RESEED, tags={RESEED_OF: trial_id})
    for i, result in enumerate(results):
        metrics = {
            k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"
        }
        recorder.trial_result(name, int(result.get("epoch", i + 1)), metrics)
    recorder.trial_ended(name, "completed", {T.BEST_VALUE: value})
    return run_id


def log_chosen(store, study: str, parent, chosen: Candidate) -> tuple[str, dict[str, float], str]:
    """The chosen candidate's best checkpoint as a servable model, tested once. Returns (model URI, test
    metrics, the run holding them): the parent's own when the original trial is the best of them."""
    trainable = get_trainable(parent.data.params["trainable"])
    if chosen.best is None:  # the study's logged best checkpoint is this trial's; or another trial's original
        if parent.data.tags.get(T.BEST_TRIAL) == chosen.trial_id and parent.data.tags.get(T.MODEL_URI):
            tests = {k: v for k, v in parent.data.metrics.items() if k.startswith("test_")}
            return parent.data.tags[T.MODEL_URI], tests, parent.info.run_id
        raise UserError(f"trial {chosen.trial_id}'s own checkpoint was not kept; retrain with more --reseeds")
    state, config, run_id = chosen.best["model"], chosen.best["config"], chosen.best_run
    tracking.log_best_checkpoint(store, run_id, chosen.best)
    digest = tracking.state_digest(state)
    model, example = trainable.export(config, state)
    model_uri = tracking.log_servable_model(store, run_id, model, example)
    tests = tracking.cached_test_metrics(store, study, digest) or trainable.evaluate(config, state, "test")
    tracking.log_values(
        store, run_id, metrics=tests, tags={T.TEST_DIGEST: digest, T.CHECKPOINT_DIGEST: digest, T.MODEL_URI: model_uri}
    )
    return model_uri, tests, run_id
