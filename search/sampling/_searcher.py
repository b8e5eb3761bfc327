"""Optuna behind Ray Tune, told the right lesson about each trial.

Ray's stock OptunaSearch tells Optuna COMPLETE for any trial whose last result has the metric, so a trial
ASHA stopped at epoch 2 looks finished. Here every epoch is an intermediate value, ASHA-stopped trials are
PRUNED, failed or diverged ones FAIL, and only trials that ran to max_t (or stopped themselves) are
COMPLETE, with their best value.
"""

from __future__ import annotations

import math
import pickle

import optuna
import ray
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from studies.words import COMPLETED, EPOCH, PRUNED, TRAIN_SECONDS

from ..engine._states import LOST, TrialProgress
from ._ranking import REASON, RankedSampler, late_reason
from ._space import grid, is_conditional

RAY_TRIAL_ID = "ray_trial_id"  # an Optuna user attribute: the Ray (and MLflow) id of the trial
RAY_VERSION = "hpsearch_ray_version"  # an Optuna study user attribute: the Ray that started the sweep
# + an epoch: an Optuna trial user attribute, that epoch's TRAIN_SECONDS, written beside its intermediate value
# under `asha: {budget: seconds}`, so that a resume replays ASHA's rungs in seconds (search/scheduling/_asha_state.py).
SECONDS_AT = f"{TRAIN_SECONDS}@"


def epoch_seconds(trial: optuna.trial.FrozenTrial) -> dict[int, float]:
    """Epoch -> the trial's TRAIN_SECONDS at that epoch, as recorded under budget: seconds ({} otherwise)."""
    return {int(k[len(SECONDS_AT) :]): v for k, v in trial.user_attrs.items() if k.startswith(SECONDS_AT)}


def fail_running(study: optuna.Study, reason: str, keep=frozenset()) -> list[tuple[str, dict]]:
    """Tell FAIL, with `reason`, for the study's trials left RUNNING (Optuna's journal storage has no
    heartbeat, so a crashed sweep's trials would stay RUNNING forever), except those in `keep` (storage ids
    of trials that a resume continues). Returns their (Ray trial id, params)."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial._trial_id not in keep:
            # A crash between Optuna's ask and Ray's id leaves none: the trial is recorded under this one.
            ray_id = trial.user_attrs.get(RAY_TRIAL_ID, f"optuna-{trial.number}")
            study._storage.set_trial_user_attr(trial._trial_id, RAY_TRIAL_ID, ray_id)
            study._storage.set_trial_user_attr(trial._trial_id, REASON, reason)
            study.tell(trial.number, state=TrialState.FAIL)
            failed.append((ray_id, dict(trial.params)))
    return failed


def trial_seed(study_seed: int, number: int) -> int:
    return (study_seed * 1_000_003 + number) % 2**31


def make_sampler(spec) -> optuna.samplers.BaseSampler:
    # OptunaSearch ignores its own seed once a sampler is given: seed the sampler itself.
    name, seed = spec.sampler, spec.seed
    conditional = is_conditional(spec)
    if name == "tpe":
        # group=True lets multivariate TPE model each conditional sub-space on its own.
        # constant_liar: running trials count as bad guesses, so concurrent workers do not all sample the same
        # spot; the ranked view below relies on it. On by default only since Optuna 5: set, not assumed.
        tpe = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=conditional, constant_liar=True)
        # Under ASHA, TPE would rank every COMPLETE trial above every PRUNED one: rank by value reached instead.
        # With or without ASHA, the view also counts diverged trials as the worst, which TPE alone ignores.
        return RankedSampler(tpe)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid(spec), seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if name == "cmaes":
        # CMA-ES handles float/int parameters; categorical ones fall back to seeded random sampling.
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            consider_pruned_trials=True,
            warn_independent_sampling=False,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
        )
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {name!r}")


class StudySearch(OptunaSearch):
    def __init__(self, *args, max_t: int, study_seed: int, halt=None, max_seconds: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._halt = halt  # () -> a reason once the sweep is being stopped; then no new trials
        self._max_t = max_t
        self._max_seconds = max_seconds  # ASHA's max_t under budget: seconds (None: ASHA counts epochs)
        self._study_seed = study_seed
        self._progress: dict[str, TrialProgress] = {}
        self._reported: dict[str, set[int]] = {}  # trial_id -> epochs already given to Optuna
        study = getattr(self, "_ot_study", None)  # none yet when Ray gives the space later
        if study is not None and RAY_VERSION not in study.user_attrs:  # a resume keeps the first: see _asha_state
            study.set_user_attr(RAY_VERSION, ray.__version__)

    # ---- saved with Ray's experiment snapshots; plain ids, not the pickled study and its storage ----
    def save(self, checkpoint_path: str) -> None:
        state = {
            "trials": {tid: t._trial_id for tid, t in self._ot_trials.items()},
            "completed": set(self._completed_trials),
            "progress": self._progress,
            "reported": self._reported,
        }
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        """Reattach to the Optuna trials of the saved Ray trials; fail the ones the snapshot never saw."""
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        study = self._ot_study
        finished = {t._trial_id for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self._ot_trials = {tid: optuna.Trial(study, ot_id) for tid, ot_id in state["trials"].items()}
        # A trial Optuna was told about after the snapshot reruns from its checkpoint in Ray; Optuna keeps
        # the first telling.
        told = {tid for tid, ot_id in state["trials"].items() if ot_id in finished}
        self._completed_trials = set(state["completed"]) | told
        self._progress, self._reported = state["progress"], state["reported"]
        self.lost = fail_running(study, LOST, keep=set(state["trials"].values()))
        # The sampler was built afresh with the study's seed: without a new seed it would repeat the
        # configurations it suggested before the interruption.
        study.sampler.reseed_rng()

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
            ot_trial = self._ot_trials[trial_id]
            config["seed"] = trial_seed(self._study_seed, ot_trial.number)
            ot_trial.set_user_attr(RAY_TRIAL_ID, trial_id)  # so a crash's lost trials can be named everywhere
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        progress = self._progress.setdefault(trial_id, TrialProgress(self.metric, self.mode))
        progress.update(result)
        value, step = result.get(self.metric), int(result.get(EPOCH, 0))
        if value is not None and math.isfinite(value) and step not in self._reported.setdefault(trial_id, set()):
            self._ot_trials[trial_id].report(float(value), step)
            if self._max_seconds is not None and TRAIN_SECONDS in result:
                self._ot_trials[trial_id].set_user_attr(f"{SECONDS_AT}{step}", float(result[TRAIN_SECONDS]))
            self._reported[trial_id].add(step)

    def note_failure(self, trial_id: str, reason: str) -> None:
        """Why an errored trial failed (`classify_error`'s reason: `oom: ...`), which Ray gives its callbacks
        after it has told this searcher. Kept on the study, so the ranked view counts an out-of-memory
        configuration as the worst."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            self._ot_study.set_user_attr(late_reason(ot_trial.number), reason[:200])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        # Ray does not pass the result on which ASHA stops a trial (its last, at a rung or at max_t) to
        # on_trial_result; it arrives here as `result`, and it counts like every other epoch.
        if result:
            self.on_trial_result(trial_id, result)
        self._reported.pop(trial_id, None)
        progress = self._progress.pop(trial_id, TrialProgress(self.metric, self.mode))
        ot_trial = self._ot_trials[trial_id]
        # A searched `epochs` (ASHA off) is this trial's own length; otherwise every trial runs to max_t.
        state, reason = progress.outcome(
            error, int(ot_trial.params.get("epochs", self._max_t)), max_seconds=self._max_seconds
        )
        try:
            if state == COMPLETED and progress.best_value is not None:
                self._ot_study.tell(ot_trial, progress.best_value)
            elif state == PRUNED:
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                ot_trial.set_user_attr(REASON, reason or state)  # a diverged one counts as the worst in the ranked view
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        except RuntimeError as exc:
            # GridSampler calls study.stop() once the grid is covered, which Optuna allows only inside
            # optimize(); the tell itself has been stored by then, and num_samples already ends the sweep.
            if "Study.stop" not in str(exc):
                raise
        self._completed_trials.add(trial_id)
