"""ASHA's rungs on `--resume`, rebuilt from the Optuna journal rather than from a pickle of Ray's objects.

At each rung (a milestone epoch) ASHA records the metric each trial had at the first epoch it reported at or
past the milestone, and stops a trial below the rung's cutoff. Ray's experiment snapshots leave the rungs
out, so a resumed sweep would judge its next trials against empty rungs. Every epoch's value is already an
intermediate value in the study's Optuna journal (StudySearch reports each one), so the rungs are replayed
from there through ASHA's public scheduler methods (`on_trial_add`, `on_trial_result`, `on_trial_complete`,
`on_trial_remove`), whose results do not depend on the order the trials are replayed in. What hpsearch
keeps is plain data (the Ray version that started the sweep): a Ray upgrade that keeps the public methods
resumes as before, and one that does not is refused in one line naming both versions.
"""

from __future__ import annotations

import dataclasses

import optuna
import ray

from studies import UserError
from trainables import EPOCH

from ._searcher import RAY_TRIAL_ID


@dataclasses.dataclass(frozen=True)
class _Trial:
    """What ASHA reads of a Ray trial: its id."""

    trial_id: str


def asha_state() -> dict:
    """What a sweep keeps for its ASHA rungs: plain data, no Ray objects."""
    return {"ray": ray.__version__}


def replay_rungs(scheduler, study: optuna.Study, metric: str, state: dict | None = None) -> int:
    """Rebuild a fresh `scheduler`'s rungs (after Ray has given it its metric and mode) from each trial's
    per-epoch values in `study`. `state`: what `asha_state` returned when the sweep was saved. Returns the
    number of trials replayed. Trials that Ray resumes are added again by Ray, as on any resume."""
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
    except Exception as exc:  # Ray changed what its ASHA does with these calls: name the versions
        started = (state or {}).get("ray", "an unrecorded version")
        raise UserError(
            f"--resume: ASHA's rungs cannot be rebuilt with Ray {ray.__version__} (this sweep started with Ray "
            f"{started}): {type(exc).__name__}: {exc}; resume with Ray {started}, or start afresh with --fresh"
        ) from None
    return replayed
