"""What TPE learns from a sweep that ASHA prunes: each finished trial ranked by the best value it reached.

Optuna's TPE (`_split_trials` in optuna/samplers/_tpe/sampler.py) puts every COMPLETE trial, by value, in
its "good" group before any PRUNED one, and ranks PRUNED ones by the step they reached first. Under
asynchronous ASHA the first trials reach max_t with no rival to stop them, so a chance-level trial can be
"good" while a pruned trial that beat it at every rung is "bad" (benchmarks/p4_tpe_groups.py shows it on
P4's seed 19). Ray's stock OptunaSearch ranks by value alone, because it calls every trial COMPLETE with its
last value, which is wrong in storage.

`RankedSampler` keeps the true states in storage (dashboards and Optuna's API stay correct) and shows the
sampler another view of the same trials: every finished trial (COMPLETE or PRUNED) ranked by the best value
it reached, wherever it stopped. P4 measured it beside a BOHB-style view that ranks every trial at one rung
(the largest that 10 finished trials reached); BENCHMARKS.md has both. The view holds the ranks as the
values of COMPLETE trials, which is all TPE reads of a single-objective study. Running trials stay as they
are, for TPE's constant liar.

A trial that failed because of its configuration counts too, as worse than any trial that reported a value,
so TPE learns to avoid its region (stock OptunaSearch gets the same lesson by telling a diverged trial
PRUNED): a diverged one (NaN/inf loss: the learning rate, say, is too high) and one out of memory (its batch,
model or image size does not fit; the same configuration runs out again on the same GPU, and the OOM retry
already steers the trial itself to half the batch). Other FAIL trials (errors, dead workers or nodes, trials
lost in a crash) say nothing about their configuration and stay out, as they do for Optuna's TPE. Without
ASHA the view ranks COMPLETE trials as their values would, so it is used there too, for the failures.
"""

from __future__ import annotations

import copy

import optuna
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from studies.words import STOP_DIVERGED, best_of, rank_key

OPTUNA_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
REASON = "hpsearch_reason"  # an Optuna user attribute: why a trial told FAIL failed (what `hpsearch results` says)
OF_THE_CONFIG = (STOP_DIVERGED, "oom")  # the reasons (prefixes) of failures that the configuration causes


def best_reached(trial: FrozenTrial, mode: str) -> float | None:
    """The value a trial counts with wherever it stopped: the best finite value it reported at any epoch (a
    COMPLETE trial with none: its own value); None if it reported none. ASHA's PRUNED trials count as finished
    with it, in the sampler's view and in the report's plots alike."""
    reached = best_of(trial.intermediate_values.values(), mode)
    if reached is None and trial.state == TrialState.COMPLETE and trial.value is not None:
        reached = best_of([trial.value], mode)
    return reached


def late_reason(number: int) -> str:
    """The study's user attribute that holds trial `number`'s reason when it was named after the trial was told
    FAIL: Ray names an error's kind (oom) to callbacks only after the searcher, and Optuna refuses to change a
    finished trial."""
    return f"{REASON}:{number}"


def failed_by_config(trial: FrozenTrial) -> bool:
    """A FAIL trial whose configuration made it fail: it diverged or ran out of memory."""
    return trial.state == TrialState.FAIL and str(trial.user_attrs.get(REASON, "")).startswith(OF_THE_CONFIG)


def rank_by_best(trials: list[FrozenTrial], mode: str) -> list[FrozenTrial]:
    """The `trials`, best first, by the best value each reached (`best_reached`); then those with none (stopped
    before their first epoch); then those that failed because of their configuration. Ties keep the trials' order."""

    def key(trial: FrozenTrial) -> tuple[bool, bool, float]:
        worst = failed_by_config(trial)
        return worst, *rank_key(None if worst else best_reached(trial, mode), mode)

    return sorted(trials, key=key)


class _View(optuna.Study):
    """The study as the sampler sees it: same name, storage and running trials; the finished ones replaced by
    their ranks (minimised). TPE reads trials only through `_get_trials`."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]):
        self.__dict__.update(study.__dict__)  # no storage calls; writes (constant liar's attrs) go to the real one
        self._directions = [StudyDirection.MINIMIZE]
        self._view_trials = trials

    def _get_trials(self, deepcopy=True, states=None, use_cache=False) -> list[FrozenTrial]:
        trials = [t for t in self._view_trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials


class RankedSampler(BaseSampler):
    """A single-objective sampler (TPE) fitted on the ranked view of a study; see the module."""

    def __init__(self, sampler: BaseSampler):
        self._sampler = sampler
        self._cached: tuple[int, _View] | None = None  # (trial number, view): one view per suggestion

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cached": None}  # Ray pickles the searcher: not the view and its storage

    def _view(self, study: optuna.Study, trial: FrozenTrial) -> optuna.Study:
        if self._cached is not None and self._cached[0] == trial.number:
            return self._cached[1]
        everything = study.get_trials(deepcopy=False, states=(*OPTUNA_FINISHED, TrialState.FAIL, TrialState.RUNNING))
        late = study.user_attrs
        for i, t in enumerate(everything):
            if t.state == TrialState.FAIL and late_reason(t.number) in late:
                everything[i] = copy.copy(t)
                everything[i].user_attrs = {**t.user_attrs, REASON: late[late_reason(t.number)]}
        counted = [t for t in everything if t.state in OPTUNA_FINISHED or failed_by_config(t)]
        ranked = rank_by_best(counted, "max" if study.direction == StudyDirection.MAXIMIZE else "min")
        trials = [
            FrozenTrial(
                number=t.number,
                state=TrialState.COMPLETE,
                value=float(rank),
                datetime_start=t.datetime_start,
                datetime_complete=t.datetime_complete,
                params=t.params,
                distributions=t.distributions,
                user_attrs={},
                system_attrs=t.system_attrs,
                intermediate_values={},
                trial_id=t._trial_id,
            )
            for rank, t in enumerate(ranked)
        ]
        trials += [t for t in everything if t.state == TrialState.RUNNING]
        trials.sort(key=lambda t: t.number)
        self._cached = (trial.number, _View(study, trials))
        return self._cached[1]

    def infer_relative_search_space(self, study, trial):
        return self._sampler.infer_relative_search_space(study, trial)  # distributions: the real study's

    def sample_relative(self, study, trial, search_space):
        return self._sampler.sample_relative(self._view(study, trial), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._sampler.sample_independent(self._view(study, trial), trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._cached = None
        self._sampler.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()
