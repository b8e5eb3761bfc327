"""digits-mlp, logging every data split each process reads to `log_dir/reads.log` ("PID SPLIT" lines), for
the test that the test split is read once, by the driver, for the final best checkpoint only.
Named by import path `tests.counting:trainable`."""

import dataclasses
import os
from pathlib import Path

from trainables._digits_pairs import DigitsData, digits_mlp

_split = DigitsData.split


def _logging(config: dict) -> dict:
    log = Path(config["log_dir"]) / "reads.log"

    def split(self, name):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {name}\n")
        return _split(self, name)

    DigitsData.split = split
    return {k: v for k, v in config.items() if k != "log_dir"}


trainable = dataclasses.replace(
    digits_mlp,
    name="counting",
    train=lambda config, reporter: digits_mlp.train(_logging(config), reporter),
    evaluate=lambda config, state, split: digits_mlp.evaluate(_logging(config), state, split),
    hyperparameters={**digits_mlp.hyperparameters, "log_dir": "where split reads are logged"},
)
