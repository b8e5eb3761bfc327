"""`hpsearch promote STUDY --candidates K --reseeds S`: promotion that does not trust one lucky seed.

Each of the study's best K configurations is trained again, to max_t, with S other training seeds (same
data splits, validation as always, the test split untouched), in this process. Every retraining is a child
run of the study's parent run (kind `reseed`). The configuration with the best mean validation value over
its retrainings (and its original trial, if that ran to max_t) wins; its best checkpoint is tested once (cached by digest) and is
what gets registered.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time

import studies
import tracking
from studies import UserError
from tracking import tags as T
from trainables import MemoryReporter, get_trainable

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


def retrain_candidates(study: str, candidates: int, reseeds: int, tracking_uri=None, run_id=None, out=None):
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
    trainable = get_trainable(parent.data.params["trainable"])
    sign = 1 if mode == "max" else -1
    found: list[Candidate] = []
    for _, row in top.iterrows():
        params = dict(row["params"])
        # A pruned or stopped trial's value is from fewer epochs than a retraining runs: it does not count.
        original = float(row["metric"]) if row["state"] == "completed" else None
        candidate = Candidate(row["trial_id"], params, [original] if original is not None else [], original)
        for s in range(1, reseeds + 1):
            seed = (int(params.get("seed", 0)) + 7919 * s) % 2**31
            started = time.monotonic()
            reporter = MemoryReporter(seed=seed, metric=metric, mode=mode)
            trainable.train({k: v for k, v in params.items() if k != "seed"}, reporter)
            values = [r[metric] for r in reporter.results if metric in r]
            if not values:
                print(f"  {row['trial_id']} seed {seed}: no {metric} (diverged)", file=out, flush=True)
                continue
            value = max(values, key=lambda v: sign * v)
            child = _record(store, parent, study, row["trial_id"], {**params, "seed": seed}, reporter.results, value)
            candidate.values.append(value)
            better = candidate.best_value is None or sign * value > sign * candidate.best_value
            if better and reporter.checkpoints:
                candidate.best_value, candidate.best_run = value, child
                candidate.best = {"model": reporter.checkpoints[-1]["model"], "config": {**params, "seed": seed},
                                  "metric": metric, "mode": mode, "value": value, "trial_id": row["trial_id"]}  # fmt: skip
            print(f"  {row['trial_id']} seed {seed}: {metric} {value:.4f} ({time.monotonic() - started:.0f}s)",
                  file=out, flush=True)  # fmt: skip
        found.append(candidate)
    ranked = sorted(found, key=lambda c: math.inf if math.isnan(c.mean) else -sign * c.mean)
    if math.isnan(ranked[0].mean):
        raise UserError("every retraining diverged: nothing to compare; promote without --candidates")
    return store, parent, ranked, ranked[0]


def _record(store, parent, study: str, trial_id: str, config: dict, results: list[dict], value: float) -> str:
    """One retraining as a child run of the study's parent run, kind `reseed`; returns its run id."""
    recorder = tracking.StudyRecorder(store, study, {})
    recorder.attach(parent)
    name = f"{trial_id}-seed{config['seed']}"
    run_id = recorder.trial_started(name, config, kind=RESEED, tags={RESEED_OF: trial_id})
    for i, result in enumerate(results):
        metrics = {k: v for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}  # fmt: skip
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
    tracking.log_values(store, run_id, metrics=tests,
                        tags={T.TEST_DIGEST: digest, T.CHECKPOINT_DIGEST: digest, T.MODEL_URI: model_uri})
    return model_uri, tests, run_id
