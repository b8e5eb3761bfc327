"""`hpsearch results` on a study with 2,000 trials, on the embedded sqlite store and on an MLflow server backed
by PostgreSQL (issue 14, "queries that scale").

A study's records are written as a sweep's driver writes them, by tracking.StudyRecorder itself: a parent run
with the tags the engine sets, then one child run per trial with its params, a few per-epoch metrics, its
state, epochs, best epoch and best value (a mix of completed, pruned and failed trials). Then
`hpsearch results STUDY` runs as a user runs it, a subprocess timed from start to exit, 3 times (median),
against each store; `python -c "import mlflow"` is timed the same way, for scale (the command's floor is its
imports). The PostgreSQL and the MLflow server are private ones started by tests/services.py.

    python benchmarks/results_2000.py                  # 2,000 trials, both stores
    python benchmarks/results_2000.py --trials 200 --stores sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

STUDY = "bench2000"
EPOCHS = 8  # the longest trial; ASHA-pruned ones stop at 1, 2 or 4
REPEATS = 3


def write_study(store, trials: int, seed: int = 0) -> None:
    """The records of one `hpsearch run STUDY` with `trials` finished trials, through StudyRecorder."""
    from tracking import StudyRecorder
    from tracking import tags as T

    rng = random.Random(seed)
    provenance = {
        "hpsearch.split_seed": "0",
        "hpsearch.python": "3.11",
        "hpsearch.git_commit": "0" * 40,
        **{f"hpsearch.version.{p}": "1.0" for p in ("hpsearch", "torch", "ray", "optuna", "mlflow")},
    }
    recorder = StudyRecorder(store, STUDY, provenance)
    recorder.start(
        {"trials": trials, "metric": "val_accuracy", "mode": "max", "max_concurrent": 4},
        f"name: {STUDY}\ntrainable: digits-cnn\ntrials: {trials}\n",
        f"{STUDY}-run",
    )
    recorder.set_parent_tags(
        {
            T.METRIC: "val_accuracy",
            T.MODE: "max",
            T.OPTUNA_STUDY: f"{STUDY}-run",
            T.RAY_EXPERIMENT: f"/tmp/ray/{STUDY}-run",
            T.SPEC_DIGEST: "0" * 64,
        }
    )
    best, best_trial = -1.0, None
    for i in range(trials):
        trial = f"{i:05d}"
        params = {
            "lr": 10 ** rng.uniform(-4, -1),
            "batch_size": rng.choice([32, 64, 128]),
            "optimizer": rng.choice(["adam", "sgd"]),
            "dropout": rng.uniform(0, 0.5),
            "channels1": 16,
        }
        recorder.trial_started(trial, params, trial_dir=f"/tmp/ray/{STUDY}-run/trial_{trial}")
        failed = rng.random() < 0.05
        epochs = 1 if failed else rng.choice([1, 2, 4, EPOCHS])
        values = [min(0.99, 0.5 + 0.4 * rng.random() * epoch / EPOCHS) for epoch in range(1, epochs + 1)]
        for epoch, value in enumerate(values, 1):
            recorder.trial_result(
                trial, epoch, {"val_accuracy": value, "train_loss": 1.0 / epoch, "time_total_s": 0.5 * epoch}
            )
        if failed:
            recorder.trial_ended(trial, "failed", {T.EPOCHS: 0, T.BEST_VALUE: None}, reason="error: RuntimeError")
            continue
        top = max(values)
        state = "completed" if epochs == EPOCHS else "pruned"
        recorder.trial_ended(trial, state, {T.EPOCHS: epochs, T.BEST_VALUE: top, T.BEST_EPOCH: values.index(top) + 1})
        if top > best:
            best, best_trial = top, trial
    recorder.log_parent_metrics({T.BEST_VALUE: best})
    recorder.set_parent_tags({T.BEST_TRIAL: best_trial})
    recorder.finish()


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def measure(name: str, store, trials: int, env: dict[str, str]) -> dict:
    import studies

    start = time.perf_counter()
    write_study(store, trials)
    writing = time.perf_counter() - start
    hpsearch = str(Path(sys.executable).parent / "hpsearch")
    where = [] if store.embedded else ["--tracking-uri", store.tracking_uri]
    times = [timed([hpsearch, "results", STUDY, *where], env)[0] for _ in range(REPEATS)]
    _, listed = timed([hpsearch, "results", STUDY, "--format", "json", *where], env)
    queries = []  # the same read in this process, where everything is imported already: the query alone
    for _ in range(REPEATS):
        start = time.perf_counter()
        frame = studies.results(STUDY, tracking_uri=None if store.embedded else store.tracking_uri)
        queries.append(time.perf_counter() - start)
    assert len(frame) == len(json.loads(listed)) == trials, (len(frame), trials)
    return {
        "store": name,
        "writing_s": writing,
        "results_s": statistics.median(times),
        "all_s": times,
        "query_s": statistics.median(queries),
        "rows": len(frame),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--stores", default="sqlite,server", help="comma-separated: sqlite, server")
    args = parser.parse_args()
    from tracking import Store

    rows = []
    with tempfile.TemporaryDirectory(prefix="results2000-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "HPSEARCH_HOME": str(tmp / "home")}
        env.pop("MLFLOW_TRACKING_URI", None)
        imports = [timed([sys.executable, "-c", "import mlflow"], env)[0] for _ in range(REPEATS)]
        if "sqlite" in args.stores:
            os.environ["HPSEARCH_HOME"] = env["HPSEARCH_HOME"]  # for the in-process read
            rows.append(measure("embedded sqlite", Store(None), args.trials, env))
        if "server" in args.stores:
            from services import mlflow_server, postgres

            with postgres() as pg, mlflow_server(pg.uri, tmp / "artifacts") as server:
                rows.append(measure("MLflow server on PostgreSQL", Store(server.uri), args.trials, env))

    print(
        f"\n{args.trials} trials; `hpsearch results {STUDY}` as a subprocess, start to exit, median of {REPEATS};"
        f" query: the same read in-process (imports done)"
    )
    print(f"{'store':<30} {'writing s':>10} {'results s':>10} {'query s':>8} {'rows':>6}  (each results run, s)")
    for row in rows:
        each = ", ".join(f"{s:.2f}" for s in row["all_s"])
        print(
            f"{row['store']:<30} {row['writing_s']:>10.1f} {row['results_s']:>10.2f} {row['query_s']:>8.2f}"
            f" {row['rows']:>6}  ({each})"
        )
    each, label = ", ".join(f"{s:.2f}" for s in imports), 'python -c "import mlflow"'
    print(f"{label:<30} {'-':>10} {statistics.median(imports):>10.2f} {'-':>8} {'-':>6}  ({each})")


if __name__ == "__main__":
    main()
