"""The private internals of Ray and Optuna that hpsearch relies on (resume, ASHA's rungs, the sampler's view),
checked by name: an upgrade that removes one fails here with the attribute's name, not deep in a resume."""

import inspect

import optuna
from ray import tune
from ray.tune.impl.tuner_internal import TunerInternal
from ray.tune.search.optuna import OptunaSearch


def test_the_private_internals_hpsearch_relies_on_are_there():
    missing = []
    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="m", mode="max")
    for attr in ("_ot_trials", "_ot_study", "_completed_trials"):  # search/sampling/_searcher.py save/restore
        if not hasattr(searcher, attr):
            missing.append(f"ray.tune.search.optuna.OptunaSearch.{attr}")
    if "_local_tuner" not in inspect.getsource(tune.Tuner.__init__):  # search/scheduling/_tune.py, on --resume
        missing.append("ray.tune.Tuner._local_tuner")
    for attr in ("_tune_config", "get_run_config"):
        if attr not in inspect.getsource(TunerInternal):
            missing.append(f"ray.tune.impl.tuner_internal.TunerInternal.{attr}")
    if not hasattr(optuna.Study, "_get_trials"):  # search/sampling/_ranking.py: the view TPE reads trials through
        missing.append("optuna.Study._get_trials")
    assert not missing, (
        "hpsearch relies on private internals that the installed versions lack: "
        + ", ".join(missing)
        + f" (ray {__import__('ray').__version__}, optuna {optuna.__version__}; tested with ray 2.60, optuna 5.0)"
    )
