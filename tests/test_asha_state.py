"""ASHA's rungs rebuilt on resume from the per-epoch values in the Optuna journal (search/scheduling/_asha_state.py),
checked against a real ASHAScheduler that saw the same results live."""

from __future__ import annotations

import random

import optuna
import pytest
import ray
from optuna.distributions import FloatDistribution
from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.trial_scheduler import TrialScheduler

from search.sampling._searcher import RAY_TRIAL_ID, RAY_VERSION
from search.scheduling._asha_state import _Trial, check_replay, replay_rungs
from studies import UserError

MAX_T = 9


def asha(mode: str) -> ASHAScheduler:
    scheduler = ASHAScheduler(time_attr="epoch", max_t=MAX_T, grace_period=1, reduction_factor=3)
    scheduler.set_search_properties("score", mode)  # as Ray does from the TuneConfig, before any trial
    return scheduler


def live_sweep(mode: str, trials: int = 24, seed: int = 0) -> tuple[ASHAScheduler, optuna.Study, list[str]]:
    """Trials run concurrently in a random interleaving through a live ASHA; each epoch's value also goes to
    an Optuna study, as StudySearch reports it. The last few trials are still running at the 'crash'."""
    rng = random.Random(seed)
    scheduler = asha(mode)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    running: dict[str, tuple[optuna.Trial, float, int]] = {}
    for i in range(trials):
        trial = study.ask({"q": FloatDistribution(0, 1)})
        trial.set_user_attr(RAY_TRIAL_ID, f"t{i}")
        scheduler.on_trial_add(None, _Trial(f"t{i}"))
        running[f"t{i}"] = (trial, trial.params["q"], 0)
        for tid in rng.sample(sorted(running), k=min(3, len(running))):  # a few epochs of some running trials
            trial, q, epoch = running[tid]
            epoch += 1
            value = q * (1 - 0.5 / epoch) + rng.gauss(0, 0.05)
            trial.report(value, epoch)
            result = {"epoch": epoch, "score": value}
            if scheduler.on_trial_result(None, _Trial(tid), result) == TrialScheduler.STOP:
                scheduler.on_trial_complete(None, _Trial(tid), result)  # Ray passes the stopping result on
                study.tell(
                    trial,
                    state=optuna.trial.TrialState.PRUNED if epoch < MAX_T else None,
                    values=None if epoch < MAX_T else value,
                )
                del running[tid]
            else:
                running[tid] = (trial, q, epoch)
    return scheduler, study, sorted(running)


def decisions(scheduler: ASHAScheduler, new: int = 12) -> list[str]:
    """What ASHA decides for new trials' first epochs: it depends on every rung's recorded values."""
    out = []
    for i in range(new):
        scheduler.on_trial_add(None, _Trial(f"new{i}"))
        for epoch in range(1, MAX_T + 1):
            action = scheduler.on_trial_result(None, _Trial(f"new{i}"), {"epoch": epoch, "score": (7 * i % new) / new})
            out.append(action)
            if action == TrialScheduler.STOP:
                break
    return out


@pytest.mark.parametrize("mode", ["max", "min"])
def test_rungs_replayed_from_the_journal_match_the_live_ones(mode):
    live, study, still_running = live_sweep(mode)
    assert still_running  # the resume has trials to continue, which Ray adds to ASHA again
    rebuilt = asha(mode)
    assert replay_rungs(rebuilt, study, "score") == sum(1 for t in study.trials if t.intermediate_values)
    assert rebuilt.debug_string().split("\n")[1:] == live.debug_string().split("\n")[1:]  # each rung's cutoff
    for tid in still_running:  # Ray's resume adds back the trials it continues
        rebuilt.on_trial_add(None, _Trial(tid))
    live_decisions = decisions(live)
    assert decisions(rebuilt) == live_decisions
    assert decisions(asha(mode)) != live_decisions  # empty rungs, as a resume without them had, decide otherwise


def test_an_empty_journal_leaves_the_rungs_empty():
    scheduler = asha("max")
    assert replay_rungs(scheduler, optuna.create_study(), "score") == 0
    assert decisions(scheduler, new=1) == [TrialScheduler.CONTINUE] * (MAX_T - 1) + [TrialScheduler.STOP]  # at max_t


def test_a_ray_whose_asha_no_longer_takes_the_replay_is_refused_in_one_line_naming_both_versions():
    class Changed(ASHAScheduler):  # an upgrade that changed what on_trial_result reads of a trial
        def on_trial_result(self, tune_controller, trial, result):
            return super().on_trial_result(tune_controller, trial.trial_name, result)

    scheduler = Changed(time_attr="epoch", max_t=MAX_T, grace_period=1, reduction_factor=3)
    scheduler.set_search_properties("score", "max")
    _, study, _ = live_sweep("max", trials=4)
    study.set_user_attr(RAY_VERSION, "2.50.0")  # as StudySearch records it when the sweep starts
    with pytest.raises(UserError) as caught:
        replay_rungs(scheduler, study, "score")
    message = str(caught.value)
    assert "\n" not in message and f"Ray {ray.__version__}" in message and "Ray 2.50.0" in message, message
    assert "--fresh" in message


def test_the_check_before_a_resume_replays_into_a_scratch_asha_of_the_spec():
    from search.sampling._searcher import StudySearch
    from studies import parse_spec

    spec = parse_spec(
        {
            "name": "a",
            "trainable": "digits-mlp",
            "metric": "score",
            "mode": "max",
            "trials": 4,
            "asha": {"max_t": MAX_T, "grace_period": 1, "reduction_factor": 3},
            "space": {"q": {"type": "float", "low": 0.0, "high": 1.0}},
        },
        "a",
    )
    searcher = StudySearch(space={"q": FloatDistribution(0, 1)}, metric="score", mode="max", max_t=MAX_T, study_seed=0)
    study = searcher._ot_study
    assert study.user_attrs[RAY_VERSION] == ray.__version__  # recorded when the sweep starts
    searcher.suggest("t0")
    searcher.on_trial_result("t0", {"epoch": 1, "score": 0.5})
    check_replay(spec.asha, study, "score", "max")  # a Ray that takes the replay: nothing to say
    assert study.trials[0].intermediate_values == {1: 0.5}
