"""S1's arm (a): the stack a user wires by hand. Ray Tune's `Tuner` with `OptunaSearch` (TPE on the same space,
seeded), `ASHAScheduler` (the same rungs) and `MLflowLoggerCallback`, training the same trainable with the same
loop through a ten-line adapter of its reporter to `tune.report`; then the single best result's checkpoint,
tested once on the test split. Same trials, max_t and concurrency as hpsearch's arms.

Two things a user would meet and fix, done as P4's stock arm does (benchmarks/p4_search.py): each trial gets
its own seed from the sweep seed, as hpsearch's trials do; and a diverged trial's last report (no metric) is
not passed to OptunaSearch, which would raise a KeyError on it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from search.sampling._searcher import trial_seed
from trainables import Reporter, get_trainable

CHECKPOINT_FILE = "checkpoint.pt"


class SeededSearch(OptunaSearch):
    """Ray's OptunaSearch as P4's and S1's stock arms use it: each trial gets its own seed, derived from the sweep
    seed as hpsearch's trials' are; a report without the metric (a diverged trial's last) is not passed on."""

    def __init__(self, *args, sweep_seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.sweep_seed = sweep_seed

    def on_trial_result(self, trial_id, result):
        if self.metric in result:
            super().on_trial_result(trial_id, result)

    def suggest(self, trial_id):
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config["seed"] = trial_seed(self.sweep_seed, self._ot_trials[trial_id].number)
        return config


class TuneReporter(Reporter):
    """The trainable's reporter, adapted to Ray Tune the plain way: a checkpoint is a folder with one file. The
    user's own, not hpsearch's RayReporter (which adds the engine's node and clock to every report)."""

    def __init__(self, metric: str, mode: str, seed: int):
        self.metric, self.mode, self._seed = metric, mode, seed

    @property
    def seed(self) -> int:
        return self._seed

    def _emit(self, metrics, checkpoint):
        if checkpoint is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(checkpoint, Path(tmp) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def restore(self):
        return None


def stock_trial(config: dict, trainable_ref: str, metric: str, mode: str) -> None:
    torch.set_num_threads(1)  # one core per trial, as hpsearch's trials get
    config = dict(config)
    seed = int(config.pop("seed", 0))
    get_trainable(trainable_ref).train(config, TuneReporter(metric, mode, seed))


def run_stock(study: dict, metric: str, mode: str, test_key: str, workdir: Path) -> dict:
    """Run the hand-wired sweep of `study` (a study dict, as S1 writes it for hpsearch) under `workdir` and
    test its best checkpoint. Returns the JSONL fields: test, val, sweep_s (training seconds over its trials),
    trials, epochs."""
    import optuna
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from search.sampling._space import to_distributions
    from studies import parse_spec

    spec = parse_spec(study, "s1")
    sampler = optuna.samplers.TPESampler(seed=spec.seed, multivariate=True)
    space = to_distributions(spec)
    searcher = SeededSearch(space=space, metric=metric, mode=mode, sampler=sampler, sweep_seed=spec.seed)
    asha = spec.asha
    scheduler = ASHAScheduler(max_t=asha.max_t, grace_period=asha.grace_period, reduction_factor=asha.reduction_factor)
    fixed = {"epochs": asha.max_t, "split_seed": spec.split_seed}
    if spec.data_root:
        fixed["data_root"] = spec.data_root
    trainable = tune.with_resources(
        tune.with_parameters(stock_trial, trainable_ref=spec.trainable, metric=metric, mode=mode), {"cpu": 1}
    )
    tuner = tune.Tuner(
        trainable,
        param_space=fixed,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.trials,
            max_concurrent_trials=spec.max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=str(workdir / "stock-ray"),
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=f"sqlite:///{workdir / 'stock-mlflow.db'}",
                    experiment_name=spec.name,
                    save_artifact=False,
                )
            ],
            verbose=0,
        ),
    )
    # hpsearch's process runs Tune without its per-trial file loggers; the grid then warns once per trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    grid = tuner.fit()
    best = grid.get_best_result(metric, mode, scope="all")  # each trial's best epoch, not its last
    with best.checkpoint.as_directory() as path:
        saved = torch.load(Path(path) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    config = {k: v for k, v in best.config.items() if k != "seed"}
    tested = get_trainable(spec.trainable).evaluate(config, saved["model"], "test")
    last = [r.metrics or {} for r in grid]
    return {
        "test": tested[test_key],
        "val": float(saved["value"]),  # the trainable's loop saves a checkpoint only when its best improves
        "sweep_s": sum(m.get("time_total_s", 0.0) for m in last),
        "trials": len(grid),
        "epochs": sum(int(m.get("training_iteration", 0)) for m in last),
    }
