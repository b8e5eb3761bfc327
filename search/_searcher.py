"""Optuna behind Ray Tune, told the right lesson about each trial.

Ray's stock OptunaSearch tells Optuna COMPLETE for any trial whose last result has the metric, so a trial
ASHA stopped at epoch 2 looks finished. Here every epoch is an intermediate value, ASHA-stopped trials are
PRUNED, failed or diverged ones FAIL, and only trials that ran to max_t (or stopped themselves) are
COMPLETE, with their best value.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from trainables import EPOCH

from ._space import grid, is_conditional
from ._states import COMPLETED, PRUNED, TrialProgress


def trial_seed(study_seed: int, number: int) -> int:
    return (study_seed * 1_000_003 + number) % 2**31


def make_sampler(spec) -> optuna.samplers.BaseSampler:
    # OptunaSearch ignores its own seed once a sampler is given: seed the sampler itself.
    name, seed = spec.sampler, spec.seed
    conditional = is_conditional(spec)
    if name == "tpe":
        # group=True lets multivariate TPE model each conditional sub-space on its own.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=conditional)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid(spec), seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if name == "cmaes":
        # CMA-ES handles float/int parameters; categorical ones fall back to seeded random sampling.
        return optuna.samplers.CmaEsSampler(
            seed=seed, consider_pruned_trials=True, warn_independent_sampling=False,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
        )  # fmt: skip
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {name!r}")


class StudySearch(OptunaSearch):
    def __init__(self, *args, max_t: int, study_seed: int, halt=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._halt = halt  # () -> a reason once the sweep is being stopped; then no new trials
        self._max_t = max_t
        self._study_seed = study_seed
        self._progress: dict[str, TrialProgress] = {}
        self._reported: dict[str, set[int]] = {}  # trial_id -> epochs already given to Optuna

    def enqueue(self, params: dict) -> None:
        """A configuration to try before the sampler's own (a warm start); missing parameters are sampled."""
        self._ot_study.enqueue_trial(params, skip_if_exists=False)

    def suggest(self, trial_id: str):
        if self._halt is not None and self._halt():
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            # Each trial's own seed follows from the study seed and its Optuna trial number, so a
            # sweep repeats (with max_concurrent 1) and any one trial can be rerun from its params.
            config["seed"] = trial_seed(self._study_seed, self._ot_trials[trial_id].number)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        progress = self._progress.setdefault(trial_id, TrialProgress(self.metric, self.mode))
        progress.update(result)
        value, step = result.get(self.metric), int(result.get(EPOCH, 0))
        if value is not None and math.isfinite(value) and step not in self._reported.setdefault(trial_id, set()):
            self._ot_trials[trial_id].report(float(value), step)
            self._reported[trial_id].add(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        # Ray does not pass the result on which ASHA stops a trial (its last, at a rung or at max_t) to
        # on_trial_result; it arrives here as `result`, and it counts like every other epoch.
        if result:
            self.on_trial_result(trial_id, result)
        self._reported.pop(trial_id, None)
        progress = self._progress.pop(trial_id, TrialProgress(self.metric, self.mode))
        state, _ = progress.outcome(error, self._max_t)
        ot_trial = self._ot_trials[trial_id]
        try:
            if state == COMPLETED and progress.best_value is not None:
                self._ot_study.tell(ot_trial, progress.best_value)
            elif state == PRUNED:
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        except RuntimeError as exc:
            # GridSampler calls study.stop() once the grid is covered, which Optuna allows only inside
            # optimize(); the tell itself has been stored by then, and num_samples already ends the sweep.
            if "Study.stop" not in str(exc):
                raise
        self._completed_trials.add(trial_id)
