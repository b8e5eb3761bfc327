"""The single model a promotion with `--candidates` registers: the winning configuration's best checkpoint,
wherever it is kept (the original trial's, logged with the parent run or in its Ray trial folder, or a
retraining's, logged with its child run), tested once and logged as a servable model on the run it came from."""

from __future__ import annotations

import dataclasses

import tracking
from studies import UserError
from studies.words import COMPLETED, rank_key
from tracking import tags as T

from ._reseed import Candidate, Retraining, load_state


@dataclasses.dataclass
class Chosen:
    """The winner's best checkpoint: its value, its configuration, the run it belongs to, and its state."""

    candidate: Candidate
    value: float
    config: dict
    run_id: str  # the run the model is logged with: the original trial's child run, or a retraining's
    state: dict
    retraining: Retraining | None = None  # None: the original trial's own checkpoint

    @property
    def label(self) -> str:
        return "its own trial" if self.retraining is None else self.retraining.label


def best_checkpoint(
    store, parent, candidate: Candidate, trial_runs: dict[str, str], mode: str, own_only: bool = False
) -> Chosen:
    """The candidate's best checkpoint: with reseeds the best of its own trial (when it ran to max_t and its
    checkpoint is kept) and its retrainings, ties to its own trial, then to the lower seed; with folds (each fold
    model saw other data), or `own_only` (the study's best, promoted as it is), its own trial's."""
    own = own_only or candidate.folds is not None
    options: list[tuple[float, Retraining | None]] = []
    if candidate.checkpoint is not None and (own or candidate.state == COMPLETED):
        options.append((candidate.original, None))
    if not own:
        options += [(r.value, r) for r in candidate.retrainings if r.value is not None and r.run_id is not None]
    # Best first; a tie keeps the listed order (its own trial, then the lower seed). One that no longer loads
    # (a trainable that saved no model) gives way to the next.
    for value, source in sorted(options, key=lambda option: rank_key(option[0], mode)):
        state = candidate.checkpoint() if source is None else load_state(store, source)
        if state is not None:
            config = dict(candidate.params) if source is None else {**source.config, "seed": source.seed}
            run_id = trial_runs[candidate.trial_id] if source is None else source.run_id
            return Chosen(candidate, value, config, run_id, state, source)
    keep = parent.data.params.get("keep_checkpoints", "3")
    raise UserError(
        f"trial {candidate.trial_id} won, but no checkpoint of it is left: its own was deleted (keep_checkpoints: "
        f"{keep} keeps the best {keep} trials') and no retraining of it saved a model; set keep_checkpoints higher "
        "in the study for its next run"
    )


def log_chosen(store, study: str, parent, chosen: Chosen, trainable) -> tuple[str, dict[str, float], str, str]:
    """The chosen checkpoint as a servable model, tested once. Returns (model URI, test metrics, the run that
    holds them, the checkpoint's digest): the parent's own when it is the study's logged best."""
    digest = tracking.state_digest(chosen.state)
    for run in (parent, store.client.get_run(chosen.run_id)):  # the study's best, or promoted before
        logged = logged_model(run, digest)
        if logged is not None:
            return *logged, run.info.run_id, digest
    if chosen.retraining is None:  # a retraining's checkpoint was logged when it was recorded
        payload = {"model": chosen.state, "config": chosen.config, "value": chosen.value}
        tracking.log_best_checkpoint(store, chosen.run_id, {**payload, "trial_id": chosen.candidate.trial_id})
    model, example = trainable.export(chosen.config, chosen.state)
    model_uri = tracking.log_servable_model(store, chosen.run_id, model, example)
    tests = tracking.cached_test_metrics(store, study, digest) or trainable.evaluate(
        chosen.config, chosen.state, "test"
    )
    tags = {T.TEST_DIGEST: digest, T.CHECKPOINT_DIGEST: digest, T.MODEL_URI: model_uri}
    tracking.log_values(store, chosen.run_id, metrics=tests, tags=tags)
    return model_uri, tests, chosen.run_id, digest


def logged_model(run, digest: str) -> tuple[str, dict[str, float]] | None:
    """(model URI, test metrics) where `run` already holds the servable model of the checkpoint (or ensemble)
    with this digest, tested; None otherwise."""
    tags = run.data.tags
    tests = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    if tags.get(T.MODEL_URI) and tags.get(T.CHECKPOINT_DIGEST) == digest and tests:
        return tags[T.MODEL_URI], tests
    return None
