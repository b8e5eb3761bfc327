"""digits-mlp, logging every data split each process reads to `log_dir/reads.log` ("PID SPLIT" lines), for
the test that the test split is read once, by the driver, for the final best checkpoint only.
Named by import path `tests.counting:trainable`.

`DigitsData.split` logs only while one of this trainable's hooks runs, and is put back after it: the driver
that runs these tests in process reads digits for other tests too, which must neither log here nor fail once
this test's folder is gone."""

import contextlib
import dataclasses
import os
from pathlib import Path

from trainables._digits_pairs import DigitsData, digits_mlp

# Every hook that takes the config first: all of them log, so that a read by any of them is counted.
HOOKS = ("train", "evaluate", "export", "samples", "predict", "setup", "data_info", "folds")


@contextlib.contextmanager
def _logging(config: dict):
    """`DigitsData.split` logging to `config["log_dir"]` for the block; yields the config without it."""
    if "log_dir" not in config:  # a hook called with the trainable's defaults only: nothing to log to
        yield config
        return
    log, split = Path(config["log_dir"]) / "reads.log", DigitsData.split

    def logged(self, name):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {name}\n")
        return split(self, name)

    DigitsData.split = logged
    try:
        yield {k: v for k, v in config.items() if k != "log_dir"}
    finally:
        DigitsData.split = split


def _logged(hook):
    def call(config, *args, **kwargs):
        with _logging(config) as plain:
            return hook(plain, *args, **kwargs)

    return call


trainable = dataclasses.replace(
    digits_mlp,
    name="counting",
    hyperparameters={**digits_mlp.hyperparameters, "log_dir": "where split reads are logged"},
    **{name: _logged(getattr(digits_mlp, name)) for name in HOOKS if getattr(digits_mlp, name) is not None},
)
