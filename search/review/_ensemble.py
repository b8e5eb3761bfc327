"""`hpsearch promote STUDY ... --ensemble N`: an ensemble chosen on held-out predictions, served as one model.

Candidates for membership are the models the promotion has at hand. With `--folds`, each finalist
configuration is one candidate: its k fold models, whose out-of-fold predictions cover every pooled training
and validation example once (served, the k models are averaged: bagging). Otherwise every model is one
candidate, scored on the validation split: the sweep's kept checkpoints (its best `keep_checkpoints` trials)
and the retrainings of `--reseeds`. Members are picked by greedy forward selection with replacement (Caruana
et al. 2004, as AutoGluon and auto-sklearn do) on those held-out predictions, at most N picks. The ensemble is
kept only when its held-out value beats the single model's; only then is the chosen one tested, once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

import tracking
from studies import UserError
from studies.words import COMPLETED, FAILED, better
from tracking import tags as T
from trainables import can_score, combine, greedy_select, held_score

from ._reseed import Candidate, Retraining, load_state
from ._single import logged_model

ENSEMBLE = tracking.ENSEMBLE  # the hpsearch.kind of the child run an ensemble is logged with
# Metrics an ensemble's test evaluation reports, where its task can score them.
_TEST_METRICS = ("val_loss", "val_accuracy", "val_iou", "val_dice", "val_mse", "val_mae", "val_psnr")


@dataclasses.dataclass
class Member:
    """One model of an ensemble: a sweep trial's checkpoint, a retraining's, or one fold's."""

    name: str
    trial_id: str
    run_id: str
    config: dict
    load: Callable[[], dict | None]
    seed: int | None = None
    fold: str | None = None  # "i/k"
    _state: dict | None = None
    _digest: str | None = None

    def state(self) -> dict | None:
        if self._state is None:
            self._state = self.load()
        return self._state

    @property
    def digest(self) -> str:
        """Its checkpoint's digest (the ensemble's identity and lineage both need it)."""
        if self._digest is None:
            self._digest = tracking.state_digest(self.state())
        return self._digest


@dataclasses.dataclass
class Unit:
    """What selection picks: one model, or one configuration's fold models (bagged)."""

    name: str
    members: list[Member]
    outputs: np.ndarray  # held-out outputs, aligned with the pool's targets


@dataclasses.dataclass
class Ensemble:
    members: list[Member]
    weights: list[float]
    held_out: float  # its value on the held-out predictions it was chosen on
    single: float  # the single model's on the same data
    path: list[float]

    @property
    def digest(self) -> str:
        """The ensemble's identity: its members' checkpoints and weights (the key of its test result)."""
        parts = sorted(f"{m.digest}:{w:.6f}" for m, w in zip(self.members, self.weights))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def lineage(self) -> list[dict]:
        return [
            {
                "name": m.name,
                "trial_id": m.trial_id,
                "run_id": m.run_id,
                "seed": m.seed,
                "fold": m.fold,
                "weight": w,
                "checkpoint_sha256": m.digest,
            }
            for m, w in zip(self.members, self.weights)
        ]


def refuse(trainable, metric: str, size: int) -> None:
    """`--ensemble` where it makes no sense: one line, before anything trains."""
    if size < 2:
        raise UserError(f"--ensemble: {size} is not allowed: an ensemble picks at least 2 members")
    if trainable.predict is None or trainable.task is None:
        raise UserError(
            f"--ensemble: trainable {trainable.name} has no held-out predictions to average (a generator, or a "
            "plain train(config, reporter) function); trainables.from_model gives them"
        )
    if not can_score(trainable.task, metric):
        raise UserError(f"--ensemble: the study's metric {metric} cannot be computed from averaged predictions")


def fold_units(store, trainable, candidates: list[Candidate]) -> tuple[list[Unit], np.ndarray]:
    """Each configuration whose every fold trained: its out-of-fold outputs over the pooled examples."""
    units, targets = [], None
    for c in candidates:
        members = [_retrained(store, c, r) for r in c.retrainings]
        if len(c.retrainings) == 0 or any(r.value is None for r in c.retrainings):
            continue
        held = [trainable.predict(m.config, m.state()) for m in members if m.state() is not None]
        if len(held) != len(members):
            continue
        index = np.concatenate([h.index for h in held])
        order = np.argsort(index)
        outputs = np.concatenate([h.outputs for h in held])[order]
        targets = np.concatenate([h.targets for h in held])[order] if targets is None else targets
        units.append(Unit(c.trial_id, members, outputs))
    return units, targets


def model_units(store, trainable, candidates: list[Candidate], kept: list[Member]) -> tuple[list[Unit], np.ndarray]:
    """Every model at hand, one unit each, on the validation split: the sweep's kept checkpoints, then the
    retrainings."""
    members = list(kept) + [_retrained(store, c, r) for c in candidates for r in c.retrainings if r.value is not None]
    units, targets = [], None
    for m in members:
        state = m.state()
        if state is None:
            continue
        held = trainable.predict(m.config, state)
        targets = held.targets if targets is None else targets
        units.append(Unit(m.name, [m], held.outputs))
    return units, targets


def _retrained(store, candidate: Candidate, job: Retraining) -> Member:
    config = {**job.config, "seed": job.seed}
    fold = f"{job.fold + 1}/{job.folds}" if job.fold is not None else None
    return Member(
        f"{candidate.trial_id}-fold{job.fold + 1}" if fold else f"{candidate.trial_id}-seed{job.seed}",
        candidate.trial_id,
        job.run_id or "",
        config,
        lambda: load_state(store, job),
        job.seed,
        fold,
    )


def select(trainable, metric: str, mode: str, units: list[Unit], targets, size: int, single: float) -> Ensemble | None:
    """Greedy selection over the units; None when fewer than two units are at hand."""
    if len(units) < 2:
        return None
    task = trainable.task
    picked = greedy_select(
        {u.name: u.outputs for u in units},
        targets,
        lambda out: held_score(task, metric, out, targets),
        mode,
        size,
        task,
    )
    members, weights = [], []
    for unit in units:
        w = picked.weights.get(unit.name, 0.0)
        for m in unit.members if w > 0 else []:
            members.append(m)
            weights.append(w / len(unit.members))
    return Ensemble(members, weights, picked.score, single, list(picked.path))


def wins(ensemble: Ensemble | None, mode: str) -> bool:
    """The ensemble is promoted only when it is strictly better than the single model on held-out data."""
    return ensemble is not None and better(ensemble.held_out, ensemble.single, mode)


def served(trainable, ensemble: Ensemble):
    """(the ensemble as one module on raw inputs, an input example)."""
    from trainables import Ensemble as Served

    modules, example = [], None
    for m in ensemble.members:
        module, ex = trainable.export(m.config, m.state())  # a fold model: its fold's preprocessing
        modules.append(module)
        example = ex if example is None else example
    return Served(modules, ensemble.weights, trainable.task), example


def log_ensemble(store, study: str, parent, trainable, ensemble: Ensemble, single) -> tuple[str, dict, str, dict]:
    """The ensemble as one servable model on a child run of its own (kind `ensemble`), tested once. Returns
    (model URI, test metrics, its run id, what it costs beside the single model `single`, a _single.Chosen)."""
    digest = ensemble.digest
    for run in tracking.child_runs(store, parent.info.experiment_id, parent.info.run_id):
        logged = logged_model(run, digest) if run.info.status == "FINISHED" else None
        if run.data.tags.get(T.KIND) == ENSEMBLE and logged is not None:  # promoted before: logged and tested
            return *logged, run.info.run_id, json.loads(run.data.tags.get(T.COST, "{}"))
    module, example = served(trainable, ensemble)
    recorder = tracking.StudyRecorder(store, study, {})
    recorder.attach(parent)
    name = f"ensemble-{digest[:8]}"
    run_id = recorder.trial_started(name, {"members": len(ensemble.members)}, kind=ENSEMBLE)
    try:
        model_uri = tracking.log_servable_model(store, run_id, module, example)
        tests = tracking.cached_test_metrics(store, study, digest) or _test(trainable, ensemble)
        cost = _cost(module, trainable.export(single.config, single.state)[0], ensemble, example)
        tags = {
            T.TEST_DIGEST: digest,
            T.CHECKPOINT_DIGEST: digest,
            T.MODEL_URI: model_uri,
            T.MEMBERS: json.dumps(ensemble.lineage()),
            T.COST: json.dumps(cost),
        }
        tracking.log_values(store, run_id, metrics=tests, tags=tags)
        recorder.trial_ended(name, COMPLETED, {T.BEST_VALUE: ensemble.held_out})
    except BaseException:
        store.client.set_terminated(run_id, status="KILLED")
        raise
    return model_uri, tests, run_id, cost


def _test(trainable, ensemble: Ensemble) -> dict[str, float]:
    """The ensemble on the test split: the members' outputs averaged as it serves them, scored once."""
    task = trainable.task
    held = [trainable.predict(m.config, m.state(), "test") for m in ensemble.members]
    outputs = combine(task, [h.outputs for h in held], ensemble.weights)
    return {
        "test_" + name.removeprefix("val_"): held_score(task, name, outputs, held[0].targets)
        for name in _TEST_METRICS
        if can_score(task, name)
    }


def _cost(module, single, ensemble: Ensemble, example) -> dict:
    """Members, parameters and predict time, each beside the single model's."""
    import torch

    batch = torch.from_numpy(np.repeat(example, max(1, 256 // len(example)), axis=0))

    def per_batch(m) -> float:
        with torch.no_grad():
            m(batch)  # warm
            times = []
            for _ in range(5):
                started = time.perf_counter()
                m(batch)
                times.append(time.perf_counter() - started)
        return statistics.median(times)

    def parameters(m) -> int:
        return sum(p.numel() for p in m.parameters())

    return {
        "members": len(ensemble.members),
        "distinct": len({m.name for m in ensemble.members}),
        "parameters": parameters(module),
        "single_parameters": parameters(single),
        "predict_ms": round(per_batch(module) * 1000, 3),
        "single_predict_ms": round(per_batch(single.eval()) * 1000, 3),
        "rows": len(batch),
    }


def kept_members(store, parent, rows: list[dict], keep: int, checkpoint_of) -> list[Member]:
    """The sweep's own best checkpoints that are still kept (its best `keep` trials that did not fail)."""
    found = []
    ranked = [r for r in rows if r["state"] != FAILED and r["metric"] is not None][:keep]
    for row in ranked:
        load = checkpoint_of(row)
        if load is None:
            continue
        found.append(
            Member(
                row["trial_id"], row["trial_id"], row["run_id"], dict(row["params"]), load, row["params"].get("seed")
            )
        )
    return found
