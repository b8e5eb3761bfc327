"""The ranked view TPE is fitted on (search/sampling/_ranking.py), on Optuna studies built trial by trial.

The study below is P4's seed-19 situation in miniature: asynchronous ASHA let the first trial run to max_t
with no rival, although it is at chance level, while later trials near x = 0.8 were better at every rung
they reached and were pruned by rivals that came later still."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.engine._states import LOST
from search.sampling._ranking import REASON, RankedSampler, rank_by_best
from trainables import EPOCH, STOP_DIVERGED, STOP_KEY

X = {"x": FloatDistribution(0.0, 1.0)}


def curve(final: float, epochs: int) -> dict[int, float]:
    return {e: final * (1 - 0.5 / e) for e in range(1, epochs + 1)}


def pruned(x: float, final: float, epochs: int):
    values = curve(final, epochs)
    return create_trial(state=TrialState.PRUNED, params={"x": x}, distributions=X, intermediate_values=values)


def complete(x: float, final: float, epochs: int = 27):
    values = curve(final, epochs)
    return create_trial(
        state=TrialState.COMPLETE,
        value=max(values.values()),
        params={"x": x},
        distributions=X,
        intermediate_values=values,
    )


def seed19_study() -> list:
    trials = [complete(0.05, 0.10), complete(0.10, 0.12)]  # ran unopposed to max_t, at chance level
    trials += [pruned(0.78 + 0.01 * i, 0.90, 3) for i in range(5)]  # good, pruned at rung 3
    trials += [pruned(0.75 + 0.01 * i, 0.88, 9) for i in range(6)]  # good, pruned at rung 9
    trials += [pruned(0.2 + 0.03 * i, 0.40, 1) for i in range(12)]  # poor, pruned at rung 1
    return trials


def test_each_trial_ranks_by_the_best_value_it_reached_wherever_it_stopped():
    trials = seed19_study()
    ranked = rank_by_best(trials, "max")
    # Pruned at 9, then pruned at 3 (both good), then the poor ones pruned at 1, then the two chance-level
    # COMPLETE trials that ran unopposed to max_t: Optuna's TPE would have put those two first.
    assert [max(t.intermediate_values) for t in ranked[:11]] == [9] * 6 + [3] * 5
    assert [t.state for t in ranked[-2:]] == [TrialState.COMPLETE] * 2
    assert ranked[0].params["x"] == 0.75  # ties keep the trials' order
    # Minimising the same metric turns the order around.
    assert rank_by_best(trials, "min")[0].params["x"] == 0.05


def test_a_trial_stopped_before_its_first_epoch_ranks_last():
    empty = create_trial(state=TrialState.PRUNED, params={"x": 0.5}, distributions=X)
    for mode in ("max", "min"):
        assert rank_by_best([empty, *seed19_study()], mode)[-1] is empty


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


def test_tpe_on_the_ranked_view_samples_where_the_good_pruned_trials_are():
    xs, study = sample_xs(RankedSampler(tpe()))
    assert sorted(xs)[len(xs) // 2] > 0.6, xs
    # Storage keeps the true states: the view only changes what the sampler sees.
    states = [t.state for t in study.get_trials()]
    assert states[:25] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED] * 23
    assert study.best_value == pytest.approx(max(curve(0.12, 27).values()))


def test_optunas_own_tpe_samples_near_the_chance_level_complete_trials():
    # The contrast that makes the test above mean something: without the view, TPE's good group is the two
    # COMPLETE trials at x = 0.05 and 0.10.
    xs, _ = sample_xs(tpe())
    assert sorted(xs)[len(xs) // 2] < 0.3, xs


def test_a_sweep_with_tpe_uses_the_ranked_view_with_or_without_asha():
    from search.sampling._searcher import make_sampler
    from studies import parse_spec

    base = {
        "name": "s",
        "trainable": "digits-mlp",
        "metric": "val_accuracy",
        "mode": "max",
        "trials": 4,
        "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
    }
    with_asha = make_sampler(parse_spec({**base, "asha": {"max_t": 9, "grace_period": 1, "reduction_factor": 3}}, "s"))
    assert isinstance(with_asha, RankedSampler)
    without = make_sampler(parse_spec({**base, "asha": "off", "fixed": {"epochs": 3}}, "s"))
    assert isinstance(without, RankedSampler)  # for the diverged trials, which TPE alone leaves out
    assert isinstance(make_sampler(parse_spec({**base, "sampler": "random"}, "s")), optuna.samplers.RandomSampler)


def failed(x: float, reason: str, values: dict[int, float] | None = None):
    return create_trial(
        state=TrialState.FAIL,
        params={"x": x},
        distributions=X,
        intermediate_values=values or {},
        user_attrs={REASON: reason},
    )


def test_a_diverged_or_out_of_memory_trial_ranks_below_every_other_and_other_failures_stay_out():
    empty = create_trial(state=TrialState.PRUNED, params={"x": 0.5}, distributions=X)
    # Diverged after two good epochs: still the worst, whatever it reported before its loss went NaN.
    diverged = failed(0.9, "diverged", {1: 0.95, 2: 0.97})
    oom = failed(0.8, "oom: torch.OutOfMemoryError: CUDA out of memory (retrying with batch_size=64)")
    for mode in ("max", "min"):
        assert rank_by_best([diverged, oom, empty, *seed19_study()], mode)[-3:] == [empty, diverged, oom]
    study = optuna.create_study(direction="maximize", sampler=RankedSampler(tpe()))
    study.add_trials([*seed19_study(), diverged, oom, failed(0.7, "error: ValueError: bad"), failed(0.6, LOST)])
    view = study.sampler._view(study, study.ask(X))
    ranks = {t.number: t.value for t in view.get_trials(states=(TrialState.COMPLETE,))}
    assert sorted(ranks) == list(range(27))  # trials 27 and 28, the error and the lost one, stay out
    assert (ranks[25], ranks[26]) == (25, 26)


THRESHOLD = 0.1  # lr above it diverges
STARTUP = 10  # TPE's random start (Optuna's n_startup_trials)


def lr_searcher(ranked: bool = True, trials: int = 30, seed: int = 0):
    """hpsearch's searcher on a study that searches lr and x, driven below as Ray would drive it (with no Ray)."""
    from search.sampling._searcher import StudySearch, make_sampler
    from search.sampling._space import to_distributions
    from studies import parse_spec

    spec = parse_spec(
        {
            "name": "d",
            "trainable": "digits-mlp",
            "metric": "score",
            "mode": "max",
            "trials": trials,
            "seed": seed,
            "asha": "off",
            "fixed": {"epochs": 1},
            "space": {
                "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
                "x": {"type": "float", "low": 0.0, "high": 1.0},
            },
        },
        "d",
    )
    sampler = make_sampler(spec)
    return StudySearch(
        space=to_distributions(spec),
        metric="score",
        mode="max",
        max_t=1,
        study_seed=seed,
        sampler=sampler if ranked else sampler._sampler,
    )  # the same TPE, on the real study


def diverging_picks(ranked: bool, trials: int = 30, seed: int = 0) -> tuple[list[bool], optuna.Study]:
    """A synthetic objective whose best lr, 10**-1.5, lies just below the lr where training diverges; returns
    which trials diverged, and the study."""
    searcher = lr_searcher(ranked, trials, seed)
    diverged = []
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        lr, x = config["lr"], config["x"]
        diverged.append(lr > THRESHOLD)
        score = math.nan if lr > THRESHOLD else -((math.log10(lr) + 1.5) ** 2) - (x - 0.5) ** 2
        searcher.on_trial_complete(
            f"t{i}", {EPOCH: 1, "score": score, STOP_KEY: STOP_DIVERGED if lr > THRESHOLD else None}
        )
    return diverged, searcher._ot_study


def test_tpe_learns_from_diverged_trials_to_sample_fewer_diverging_configurations():
    counted, study = diverging_picks(ranked=True)
    left_out, _ = diverging_picks(ranked=False)
    assert counted[:STARTUP] == left_out[:STARTUP]  # the same seed: the same random start
    # Seeds 0-11 gave 3-7 diverging picks of the next 20 with them counted, 14-18 with them left out.
    assert 2 * sum(counted[STARTUP:]) < sum(left_out[STARTUP:]), (counted, left_out)
    # Optuna holds each diverged trial as FAIL, with the reason, and the others as COMPLETE.
    fails = study.get_trials(states=(TrialState.FAIL,))
    assert len(fails) == sum(counted) and {t.user_attrs[REASON] for t in fails} == {"diverged"}
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == len(counted) - sum(counted)


def test_an_out_of_memory_trial_named_after_its_tell_counts_as_the_worst():
    # Ray tells the searcher that a trial errored before its callbacks learn why (classify_error): the reason
    # comes later, through note_failure, when Optuna no longer lets the FAIL trial change.
    searcher = lr_searcher()
    for i in range(4):
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {EPOCH: 1, "score": float(i)})
    for tid, reason in (("t4", "oom: torch.OutOfMemoryError: CUDA out of memory"), ("t5", "error: ValueError: x")):
        searcher.suggest(tid)
        searcher.on_trial_complete(tid, error=True)
        searcher.note_failure(tid, reason)
    study = searcher._ot_study
    assert [t.state for t in study.trials[4:]] == [TrialState.FAIL] * 2
    view = study.sampler._view(study, study.ask())
    ranks = {t.number: t.value for t in view.get_trials(states=(TrialState.COMPLETE,))}
    assert ranks == {3: 0, 2: 1, 1: 2, 0: 3, 4: 4}  # the OOM trial last; the error stays out
