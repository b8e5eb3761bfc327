"""P5 (issue 4): control-plane time per trial at trial 1,000, as a share of a 5-second trial.

The control plane of one trial, exactly as a sweep runs it, minus Ray and minus training: hpsearch's
searcher (Optuna TPE, multivariate, on the study's journal file) suggests a configuration; the trial reports
10 epochs (each an intermediate value in Optuna, and metrics buffered for MLflow); the searcher tells
Optuna the outcome; the driver's MLflow recorder creates the trial's child run, logs its 10 epochs and
closes it (sqlite + file store, the default). Each trial's wall time is measured; the figure is the median
over trials 901..1,000 against a 5 s trial (target: 2%, 100 ms).

    python benchmarks/p5_control_plane.py            # 1,000 trials
    python benchmarks/p5_control_plane.py --trials 200
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPACE = {
    "lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
    "batch_size": {"type": "int", "low": 8, "high": 256, "log": True},
    "optimizer": {"type": "categorical", "choices": ["adam", "adamw", "sgd"]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.8},
}
EPOCHS = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--tracking-uri", help="an MLflow tracking URI instead of the embedded sqlite store")
    args = parser.parse_args()
    measure(args.trials, args.tracking_uri)


def measure(trials: int, tracking_uri: str | None = None, label: str = "P5") -> dict[str, list[float]]:
    """P5's loop against `tracking_uri` (None: the embedded sqlite store); prints the figures and returns
    the per-trial seconds of each part."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HPSEARCH_HOME"] = str(Path(tmp) / "home")
        from search.sampling._searcher import StudySearch, make_sampler
        from search.sampling._space import to_distributions
        from search.scheduling._tune import optuna_storage
        from studies import parse_spec
        from tracking import Store, StudyRecorder

        name = f"p5-{int(time.time())}"  # a server keeps earlier runs' experiments
        spec = parse_spec(
            {
                "name": name,
                "trainable": "digits-mlp",
                "space": SPACE,
                "trials": trials,
                "asha": {"max_t": EPOCHS, "grace_period": 1},
            },
            name,
        )
        store = Store(tracking_uri)
        recorder = StudyRecorder(store, name, {})
        recorder.start({"trials": trials}, f"name: {name}\n", name)
        searcher = StudySearch(
            space=to_distributions(spec),
            metric="val_accuracy",
            mode="max",
            sampler=make_sampler(spec),
            study_name="p5",
            storage=optuna_storage(store.home / "optuna" / "p5.journal"),
            max_t=EPOCHS,
            study_seed=0,
        )
        rng = random.Random(0)
        parts = {"suggest": [], "optuna reports + tell": [], "mlflow": [], "total": []}
        started = time.monotonic()
        for i in range(trials):
            tid = f"t{i:05d}"
            t0 = time.perf_counter()
            config = searcher.suggest(tid)
            t1 = time.perf_counter()
            recorder.trial_started(tid, config)
            mlflow_s = time.perf_counter() - t1
            optuna_s = 0.0
            quality = rng.random()
            for epoch in range(1, EPOCHS + 1):
                result = {"epoch": epoch, "val_accuracy": quality * (1 - 0.5 / epoch), "train_loss": 1.0 / epoch}
                a = time.perf_counter()
                searcher.on_trial_result(tid, result)
                b = time.perf_counter()
                recorder.trial_result(
                    tid, epoch, {"val_accuracy": result["val_accuracy"], "train_loss": result["train_loss"]}
                )
                c = time.perf_counter()
                optuna_s, mlflow_s = optuna_s + b - a, mlflow_s + c - b
            a = time.perf_counter()
            searcher.on_trial_complete(tid, result)
            b = time.perf_counter()
            recorder.trial_ended(tid, "completed", {"hpsearch.epochs": EPOCHS, "best_value": result["val_accuracy"]})
            c = time.perf_counter()
            optuna_s, mlflow_s = optuna_s + b - a, mlflow_s + c - b
            for key, value in (
                ("suggest", t1 - t0),
                ("optuna reports + tell", optuna_s),
                ("mlflow", mlflow_s),
                ("total", time.perf_counter() - t0),
            ):
                parts[key].append(value)
            if (i + 1) % 100 == 0:
                print(
                    f"trial {i + 1}: {1000 * statistics.median(parts['total'][-10:]):.1f} ms per trial "
                    f"(median of the last 10) [{time.monotonic() - started:.0f}s]",
                    flush=True,
                )
        recorder.finish()
        last = slice(max(0, trials - 100), trials)
        for key, values in parts.items():
            print(
                f"{key}: first 100 median {1000 * statistics.median(values[:100]):.1f} ms, "
                f"last 100 median {1000 * statistics.median(values[last]):.1f} ms, "
                f"last 100 90th percentile {1000 * statistics.quantiles(values[last], n=10)[-1]:.1f} ms"
            )
        total = statistics.median(parts["total"][last])
        print(
            f"{label} ({store.tracking_uri.split('@')[-1]}): control plane at trials {max(1, trials - 99)}..{trials}: "
            f"{1000 * total:.1f} ms = {100 * total / 5:.2f}% of a 5 s trial (target <= 2%, 100 ms)"
        )
        return parts


if __name__ == "__main__":
    main()
