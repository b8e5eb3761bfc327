"""ASHA's rungs on `--resume`, rebuilt from the Optuna journal rather than from a pickle of Ray's objects.

At each rung (a milestone epoch, or under `budget: seconds` a milestone of training seconds) ASHA records the
metric each trial had at the first epoch it reported at or past the milestone, and stops a trial below the
rung's cutoff. Ray's experiment snapshots leave the rungs
out, so a resumed sweep would judge its next trials against empty rungs. Every epoch's value is already an
intermediate value in the study's Optuna journal (StudySearch reports each one, and under seconds each epoch's
TRAIN_SECONDS as a trial user attribute beside it), so the rungs are replayed
from there through ASHA's public scheduler methods (`on_trial_add`, `on_trial_result`, `on_trial_complete`),
whose outcome does not depend on the order the trials are replayed in. Nothing of Ray's is pickled: a Ray
upgrade that keeps those methods resumes as before, and one that does not is refused in one line naming the
Ray that started the sweep (a study user attribute, set by StudySearch) and the one installed.
"""

from __future__ import annotations

import dataclasses

import optuna
import ray
from ray.tune.schedulers import ASHAScheduler

from studies import UserError
from studies.words import EPOCH, TRAIN_SECONDS

from ..sampling._searcher import RAY_TRIAL_ID, RAY_VERSION, epoch_seconds


@dataclasses.dataclass(frozen=True)
class _Trial:
    """What ASHA reads of a Ray trial: its id."""

    trial_id: str


def make_asha(asha, metric: str | None = None, mode: str | None = None) -> ASHAScheduler:
    """Ray's ASHA for a study's `asha` spec; metric and mode None: Ray gives them from the TuneConfig."""
    return ASHAScheduler(
        # Our epochs or TRAIN_SECONDS: both are counted by the trial and restored with its checkpoint.
        time_attr=TRAIN_SECONDS if asha.seconds else EPOCH,
        metric=metric,
        mode=mode,
        max_t=asha.max_t,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )


def _results(ot_trial, metric: str) -> list[dict]:
    """A trial's results as ASHA saw them, epoch by epoch: its value, its epoch and, where recorded (under
    budget: seconds), its TRAIN_SECONDS. ASHA reads whichever is its time axis."""
    values, seconds = ot_trial.intermediate_values, epoch_seconds(ot_trial)
    return [
        {EPOCH: epoch, **({TRAIN_SECONDS: seconds[epoch]} if epoch in seconds else {}), metric: values[epoch]}
        for epoch in sorted(values)
    ]


def replay_rungs(scheduler, study: optuna.Study, metric: str) -> int:
    """Rebuild a fresh `scheduler`'s rungs (once Ray has given it its metric and mode) from each trial's
    per-epoch values in `study`. Returns the number of trials replayed. Each leaves ASHA afterwards: the trials
    that Ray resumes, Ray adds again, as on any resume."""
    replayed = 0
    try:
        for ot_trial in study.get_trials(deepcopy=False):
            trial_id, values = ot_trial.user_attrs.get(RAY_TRIAL_ID), ot_trial.intermediate_values
            if not trial_id or not values:
                continue
            trial, results = _Trial(trial_id), _results(ot_trial, metric)
            scheduler.on_trial_add(None, trial)
            for result in results[:-1]:
                scheduler.on_trial_result(None, trial, result)
            # As Ray does with a trial's last result: recorded even at max_t, and the trial leaves ASHA.
            scheduler.on_trial_complete(None, trial, results[-1])
            replayed += 1
    except Exception as exc:  # this Ray's ASHA does something else with these calls: name the versions
        started = study.user_attrs.get(RAY_VERSION, "an unrecorded version")
        raise UserError(
            f"--resume: ASHA's rungs cannot be rebuilt with Ray {ray.__version__} (this sweep started with Ray "
            f"{started}): {type(exc).__name__}: {exc}; resume with Ray {started}, or start afresh with --fresh"
        ) from None
    return replayed


def check_replay(asha, study: optuna.Study, metric: str, mode: str) -> None:
    """Before Ray resumes: replay into a scratch ASHA (spec `asha`), so that a Ray which cannot take the replay
    is refused here. Inside Ray's resume an exception does not stop the sweep: Ray restarts it from scratch."""
    replay_rungs(make_asha(asha, metric, mode), study, metric)
