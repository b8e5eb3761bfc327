"""The spec -> Optuna conversion, checked at the bounds (ours are inclusive everywhere)."""

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search.sampling._space import to_distributions
from studies import parse_spec

SPEC = parse_spec(
    {
        "name": "s",
        "trainable": "digits-mlp",
        "space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "layers": {"type": "int", "low": 1, "high": 3},
            "hidden": {"type": "int", "low": 16, "high": 64, "log": True},
            "batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            "one": {"type": "int", "low": 5, "high": 5},
        },
    },
    "s.yaml",
)


def test_distributions_keep_bounds_and_scale():
    d = to_distributions(SPEC)
    assert d["lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert d["dropout"] == FloatDistribution(0.0, 0.5)
    assert d["layers"] == IntDistribution(1, 3)
    assert d["hidden"] == IntDistribution(16, 64, log=True)
    assert d["batch_size"] == IntDistribution(16, 64, step=16)
    assert d["optimizer"] == CategoricalDistribution(("adam", "sgd"))
    assert d["one"] == IntDistribution(5, 5)


def test_int_upper_bound_is_sampled_inclusive():
    """Unlike tune.randint, `high` is a value a trial can get."""
    d = to_distributions(SPEC)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {k: set() for k in ("layers", "batch_size", "one")}
    for _ in range(200):
        trial = study.ask(fixed_distributions=d)
        for k in seen:
            seen[k].add(trial.params[k])
        assert 1e-4 <= trial.params["lr"] <= 1e-1
        assert 0.0 <= trial.params["dropout"] <= 0.5
        assert 16 <= trial.params["hidden"] <= 64
        study.tell(trial, 0.0)
    assert seen["layers"] == {1, 2, 3}
    assert seen["batch_size"] == {16, 32, 48, 64}
    assert seen["one"] == {5}
