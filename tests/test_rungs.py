"""The rung view TPE is fitted on under ASHA (search/_rungs.py), on Optuna studies built trial by trial.

The study below is P4's seed-19 situation in miniature: asynchronous ASHA let the first trial run to max_t
with no rival, although it is at chance level, while later trials near x = 0.8 were better at every rung
they reached and were pruned by rivals that came later still."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search._rungs import RungSampler, asha_rungs, fitting_rung, rank_at_rung

RUNGS = asha_rungs(27, 1, 3)
X = {"x": FloatDistribution(0.0, 1.0)}


def curve(final: float, epochs: int) -> dict[int, float]:
    return {e: final * (1 - 0.5 / e) for e in range(1, epochs + 1)}


def pruned(x: float, final: float, epochs: int):
    values = curve(final, epochs)
    return create_trial(state=TrialState.PRUNED, params={"x": x}, distributions=X, intermediate_values=values)


def complete(x: float, final: float, epochs: int = 27):
    values = curve(final, epochs)
    return create_trial(state=TrialState.COMPLETE, value=max(values.values()), params={"x": x}, distributions=X,
                        intermediate_values=values)  # fmt: skip


def seed19_study() -> list:
    trials = [complete(0.05, 0.10), complete(0.10, 0.12)]  # ran unopposed to max_t, at chance level
    trials += [pruned(0.78 + 0.01 * i, 0.90, 3) for i in range(5)]  # good, pruned at rung 3
    trials += [pruned(0.75 + 0.01 * i, 0.88, 9) for i in range(6)]  # good, pruned at rung 9
    trials += [pruned(0.2 + 0.03 * i, 0.40, 1) for i in range(12)]  # poor, pruned at rung 1
    return trials


def test_asha_rungs_are_rays_milestones_then_max_t():
    assert asha_rungs(27, 1, 3) == [1, 3, 9, 27]
    assert asha_rungs(10, 1, 3) == [1, 3, 9, 10]
    assert asha_rungs(20, 2, 4) == [2, 8, 20]
    assert asha_rungs(5, 5, 3) == [5]


def test_the_fitting_rung_is_the_largest_that_enough_finished_trials_reached():
    trials = seed19_study()
    # 2 reached 27, 8 reached 9, 13 reached 3, all 25 reached 1
    assert fitting_rung(trials, RUNGS, min_trials=10) == 3
    assert fitting_rung(trials, RUNGS, min_trials=8) == 9
    assert fitting_rung(trials, RUNGS, min_trials=2) == 27
    assert fitting_rung(trials, RUNGS, min_trials=26) == 1


def test_a_trial_that_ran_unopposed_to_max_t_ranks_by_its_value_at_the_rung():
    trials = seed19_study()
    ranked = rank_at_rung(trials, RUNGS, 3, maximize=True)
    # The 11 good pruned trials come first, then the two chance-level COMPLETE ones, then those stopped at 1.
    assert {t.params["x"] for t in ranked[:11]} == {t.params["x"] for t in trials[2:13]}
    assert [t.state for t in ranked[11:13]] == [TrialState.COMPLETE] * 2
    assert ranked[0].intermediate_values[3] == pytest.approx(0.90 * (1 - 0.5 / 3))
    # Minimising the same metric turns the order around within each rung reached.
    flipped = rank_at_rung(trials, RUNGS, 3, maximize=False)
    assert flipped[0].params["x"] == 0.05 and flipped[-1].intermediate_values == curve(0.40, 1)


def test_a_trial_stopped_before_its_first_epoch_ranks_last():
    empty = create_trial(state=TrialState.PRUNED, params={"x": 0.5}, distributions=X)
    ranked = rank_at_rung([empty, *seed19_study()], RUNGS, 3, maximize=True)
    assert ranked[-1] is empty


def sample_xs(sampler, n: int = 12) -> list[float]:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.add_trials(seed19_study())
    xs = []
    for _ in range(n):
        trial = study.ask(X)
        xs.append(trial.params["x"])
        study.tell(trial, state=TrialState.FAIL)  # TPE ignores FAIL: every suggestion sees the same trials
    return xs, study


def tpe(seed: int = 0) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def test_tpe_on_the_rung_view_samples_where_the_good_pruned_trials_are():
    xs, study = sample_xs(RungSampler(tpe(), RUNGS))
    assert sorted(xs)[len(xs) // 2] > 0.6, xs
    assert study.sampler.last_rung == 3
    # Storage keeps the true states: the view only changes what the sampler sees.
    states = [t.state for t in study.get_trials()]
    assert states[:25] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED] * 23
    assert study.best_value == pytest.approx(max(curve(0.12, 27).values()))


def test_optunas_own_tpe_samples_near_the_chance_level_complete_trials():
    # The contrast that makes the test above mean something: without the view, TPE's good group is the two
    # COMPLETE trials at x = 0.05 and 0.10.
    xs, _ = sample_xs(tpe())
    assert sorted(xs)[len(xs) // 2] < 0.3, xs


def test_a_sweep_with_asha_and_tpe_uses_the_rung_view():
    from search._searcher import make_sampler
    from studies import parse_spec

    base = {"name": "s", "trainable": "digits-mlp", "metric": "val_accuracy", "mode": "max", "trials": 4,
            "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}}  # fmt: skip
    with_asha = make_sampler(parse_spec({**base, "asha": {"max_t": 9, "grace_period": 1, "reduction_factor": 3}}, "s"))
    assert isinstance(with_asha, RungSampler) and with_asha._rungs == [1, 3, 9]
    without = make_sampler(parse_spec({**base, "asha": "off", "fixed": {"epochs": 3}}, "s"))
    assert isinstance(without, optuna.samplers.TPESampler)
    assert isinstance(make_sampler(parse_spec({**base, "sampler": "random"}, "s")), optuna.samplers.RandomSampler)
