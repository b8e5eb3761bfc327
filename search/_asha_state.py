"""ASHA's rungs on `--resume`, rebuilt from the Optuna journal rather than from a pickle of Ray's objects.

At each rung (a milestone epoch) ASHA records the metric each trial had at the first epoch it reported at or
past the milestone, and stops a trial below the rung's cutoff. Ray's experiment snapshots leave the rungs
out, so a resumed sweep would judge its next trials against empty rungs. Every epoch's value is already an
intermediate value in the study's Optuna journal (StudySearch reports each one), so the rungs are replayed
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
from trainables import EPOCH

from ._searcher import RAY_TRIAL_ID, RAY_VERSION


@dataclasses.dataclass(frozen=True)
class _Trial:
    """What ASHA reads of a Ray trial: its id."""

    trial_id: str


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
            trial = _Trial(trial_id)
            scheduler.on_trial_add(None, trial)
            *earlier, last = sorted(values)
            for epoch in earlier:
                scheduler.on_trial_result(None, trial, {EPOCH: epoch, metric: values[epoch]})
            # As Ray does with a trial's last result: recorded even at max_t, and the trial leaves ASHA.
            scheduler.on_trial_complete(None, trial, {EPOCH: last, metric: values[last]})
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
    scratch = ASHAScheduler(
        time_attr=EPOCH,
        metric=metric,
        mode=mode,
        max_t=asha.max_t,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )
    replay_rungs(scratch, study, metric)
