"""What TPE learns from a sweep that ASHA prunes: every trial judged at one rung, BOHB-style.

Optuna's TPE (`_split_trials` in optuna/samplers/_tpe/sampler.py) puts every COMPLETE trial, by value, in
its "good" group before any PRUNED one. Under asynchronous ASHA the first trials reach max_t with no rival to
stop them, so a chance-level trial can be "good" while a pruned trial that beat it at every rung is "bad"
(benchmarks/p4_tpe_groups.py shows it on P4's seed 19). Ray's stock OptunaSearch avoids that by calling
every trial COMPLETE with its last value, which is wrong in storage.

`RungSampler` keeps the states in storage as they are (dashboards and Optuna's API stay correct) and shows
the sampler another view of the same trials: each finished trial is ranked at the fitting rung, the largest
rung that at least `min_trials` finished trials reached (BOHB's rule, Falkner et al. 2018), by its best value
up to that rung. Trials that stopped below it rank after those that reached it, by the rung they reached and
their best value there. The view holds the ranks as the values of COMPLETE trials, which is all TPE reads of
a single-objective study. Running trials stay as they are, for TPE's constant liar.
"""

from __future__ import annotations

import copy
import math

import optuna
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def asha_rungs(max_t: int, grace: int, rf: int) -> list[int]:
    """The epochs at which ASHA judges a trial (Ray's milestones grace * rf**k), then max_t."""
    rungs, rung = [], grace
    while rung < max_t:
        rungs.append(rung)
        rung *= rf
    return rungs + [max_t]


def _reached(trial: FrozenTrial) -> float:
    """The epoch a finished trial counts as having reached: a COMPLETE one ran to max_t or stopped itself
    (its early stopping says more epochs would not help), so it reached every rung."""
    if trial.state == TrialState.COMPLETE:
        return math.inf
    return max(trial.intermediate_values, default=0)


def fitting_rung(trials: list[FrozenTrial], rungs: list[int], min_trials: int) -> int:
    """The largest rung that at least `min_trials` of the finished `trials` reached; the lowest rung if none."""
    for rung in sorted(rungs, reverse=True):
        if sum(_reached(t) >= rung for t in trials) >= min_trials:
            return rung
    return min(rungs)


def rank_at_rung(trials: list[FrozenTrial], rungs: list[int], rung: int, maximize: bool) -> list[FrozenTrial]:
    """The finished `trials`, best first, judged at `rung`: by the highest rung each reached (up to `rung`),
    then by its best value up to there. A trial with no value (stopped before its first epoch) is last."""

    def key(trial: FrozenTrial) -> tuple[float, float]:
        level = max((r for r in rungs if r <= min(_reached(trial), rung)), default=None)
        if level is None:
            return (math.inf, math.inf)
        values = [v for step, v in trial.intermediate_values.items() if step <= level and math.isfinite(v)]
        if not values and trial.state == TrialState.COMPLETE and trial.value is not None:
            values = [trial.value]
        if not values:
            return (math.inf, math.inf)
        best = max(values) if maximize else min(values)
        return (-level, -best if maximize else best)

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


class RungSampler(BaseSampler):
    """A single-objective sampler (TPE) fitted on the rung view of an ASHA-pruned study; see the module."""

    def __init__(self, sampler: BaseSampler, rungs: list[int], min_trials: int = 10):
        # min_trials 10: TPE's own n_startup_trials, and BOHB's d + 2 points for P4's 7 parameters + 1.
        self._sampler, self._rungs, self._min_trials = sampler, sorted(set(rungs)), min_trials
        self._cached: tuple[int, _View] | None = None  # (trial number, view): one view per suggestion
        self.last_rung: int | None = None  # the rung the last view was fitted at (for tests and diagnostics)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cached": None}  # Ray pickles the searcher: not the view and its storage

    def _view(self, study: optuna.Study, trial: FrozenTrial) -> optuna.Study:
        if self._cached is not None and self._cached[0] == trial.number:
            return self._cached[1]
        everything = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        finished = [t for t in everything if t.state in FINISHED]
        rung = fitting_rung(finished, self._rungs, self._min_trials)
        ranked = rank_at_rung(finished, self._rungs, rung, study.direction == StudyDirection.MAXIMIZE)
        trials = [
            FrozenTrial(number=t.number, state=TrialState.COMPLETE, value=float(rank), datetime_start=t.datetime_start,
                        datetime_complete=t.datetime_complete, params=t.params, distributions=t.distributions,
                        user_attrs={}, system_attrs=t.system_attrs, intermediate_values={}, trial_id=t._trial_id)
            for rank, t in enumerate(ranked)
        ]  # fmt: skip
        trials += [t for t in everything if t.state == TrialState.RUNNING]
        trials.sort(key=lambda t: t.number)
        self._cached, self.last_rung = (trial.number, _View(study, trials)), rung
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
