"""S1's tasks: each a study (the same for every arm) and the test metric it is judged on. All run offline.

Every arm of every task gets the same sweep budget: 16 trials, ASHA rungs at 1, 3 and 9 epochs, two trials at
a time on one core each. That is the catalog's digits studies (24 trials, rungs at 3, 9 and 20 epochs) sized
down so that all tasks, seeds and arms fit an hour on the 2-core VM. A seed s sets the sweep's seed (both
stacks' sampler and trial seeds) and the data split (`split_seed`), so the arms of one seed are trained and
tested on the same rows.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np

TRIALS = 16  # TPE's 10 random start-up trials, then 6 it models
ASHA = {"max_t": 9, "grace_period": 1, "reduction_factor": 3}  # epochs: rungs at 1, 3 and 9
CONCURRENT = 2  # trials at once: the VM's two cores
# The digits studies' optimisation space, for the two tasks that are not in the catalog.
OPTIMISATION = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
    "batch_size": {"type": "int", "low": 16, "high": 128, "log": True},
    "optimizer": {"type": "categorical", "choices": ["adam", "adamw"]},
    "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
}
IMAGE_SIDE = 16  # pixels: the image task's digits, upsampled from 8x8, as a small MNIST-format data set


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    trainable: str
    space: dict
    test_key: str  # the test metric the arms are compared on
    mode: str  # "max": higher is better
    image_data: bool = False  # the study reads digits written as MNIST files under a data root

    def study(self, seed: int, workdir: Path) -> dict:
        """The study for seed `seed` (hpsearch's arms run it; the hand-wired arm reads the same fields)."""
        spec = {
            "name": f"s1-{self.name}",
            "trainable": self.trainable,
            "space": self.space,
            "trials": TRIALS,
            "asha": dict(ASHA),
            "resources": {"cpus": 1, "gpus": 0},
            "max_concurrent": CONCURRENT,
            # Retention only (the sweep is the same): arm f's ensemble chooses among the sweep's best 8 models.
            "keep_checkpoints": 8,
            "sampler": "tpe",
            "seed": seed,
            "split_seed": seed,
        }
        if self.image_data:
            spec["data_root"] = str(write_digits_as_mnist(workdir / "data", seed))
        return spec


def _catalog(name: str) -> dict:
    """The catalog study's space (its trials and rungs are S1's, the same for every task)."""
    import yaml

    from studies import builtin_studies

    return yaml.safe_load(builtin_studies()[name].read_text())["space"]


TASKS = {
    t.name: t
    for t in (
        Task("digits-cnn", "digits-cnn", _catalog("digits-cnn"), "test_accuracy", "max"),
        Task("digits-mlp", "digits-mlp", _catalog("digits-mlp"), "test_accuracy", "max"),
        Task(
            "diabetes-mlp",
            "benchmarks.s1_diabetes:trainable",
            {
                **OPTIMISATION,
                "batch_size": {"type": "int", "low": 8, "high": 64, "log": True},  # 282 training rows
                "hidden": {"type": "int", "low": 8, "high": 128, "log": True},
                "layers": {"type": "int", "low": 1, "high": 3},
            },
            "test_mse",
            "min",
        ),
        Task(
            # The built-in mnist-cnn trainable (the vision family) reading MNIST's own file format. The digits
            # studies' optimisation space: the catalog mnist-cnn study's has SGD+Nesterov's conditional
            # momentum, which the hand-wired arm would need a define-by-run space for.
            "digits16-mnist-cnn",
            "mnist-cnn",
            {
                **OPTIMISATION,
                "blocks": {"type": "int", "low": 1, "high": 3},
                "channels": {"type": "int", "low": 8, "high": 64, "log": True},
            },
            "test_accuracy",
            "max",
            image_data=True,
        ),
    )
}


def write_digits_as_mnist(root: Path, split_seed: int, side: int = IMAGE_SIDE) -> Path:
    """scikit-learn's digits upsampled to `side` pixels and written as MNIST's raw idx files under
    root/MNIST/raw, where torchvision's MNIST (and so the mnist-* trainables) read them: the 20% test split
    (stratified, by `split_seed`) as t10k, the rest as train, from which the trainable holds out validation.
    Returns root."""
    import torch
    from sklearn.datasets import load_digits

    from trainables._loading import hold_out

    raw = root / "MNIST" / "raw"
    if (raw / "t10k-labels-idx1-ubyte").exists():
        return root
    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float()[:, None] / 16  # 0..16 -> 0..1
    big = torch.nn.functional.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False)
    images = (big[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    labels = digits.target.astype(np.uint8)
    train, test = hold_out(np.arange(len(labels)), labels, 0.2, split_seed)
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, rows in (("train", np.sort(train)), ("t10k", np.sort(test))):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[rows])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[rows])
    return root


def _write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's big-endian idx format: magic 0x08 (unsigned byte) and the number of dimensions, each dimension,
    then the bytes."""
    path.write_bytes(struct.pack(f">{1 + array.ndim}i", 0x800 + array.ndim, *array.shape) + array.tobytes())
