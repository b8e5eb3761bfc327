"""Issue 5's two measured claims, on this machine, side by side in one run:

  disk    a 200-trial study holds about K + concurrency checkpoints with checkpoint GC (keep_checkpoints K),
          against every trial's checkpoint without it (the same study, keep_checkpoints = trials)
  sqlite  8 trials at once on the sqlite default, while another process reads the results every 0.2 s,
          never hits "database is locked" (all MLflow writes happen in the driver)

Each arm is a real `hpsearch run` (Ray, Optuna, MLflow) of `benchmarks.ballast:train`, a trainable that
checkpoints `payload_kb` every epoch. Prints one line per arm.

    python benchmarks/overnight.py               # 200 trials per disk arm, 64 for sqlite
    python benchmarks/overnight.py --trials 40   # a quicker look
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # Ray workers import benchmarks.ballast from where hpsearch started


def study(path: Path, name: str, **fields) -> str:
    spec = {
        "name": name,
        "trainable": "benchmarks.ballast:train",
        "metric": "loss",
        "mode": "min",
        "space": {"x": {"type": "float", "low": -1.0, "high": 1.0}},
        "sampler": "random",
        **fields,
    }
    file = path / f"{name}.yaml"
    file.write_text(yaml.safe_dump(spec))
    return str(file)


def checkpoints(home: Path, name: str) -> tuple[int, int]:
    dirs = list((home / "ray").glob(f"{name}-*/*/checkpoint_*"))
    size = sum(f.stat().st_size for d in dirs for f in d.rglob("*") if f.is_file())
    return len(dirs), size


def disk_arm(home: Path, tmp: Path, name: str, trials: int, keep: int, concurrency: int) -> dict:
    from search import api

    peak = [0]
    done = threading.Event()

    def watch():
        while not done.wait(0.25):
            peak[0] = max(peak[0], checkpoints(home, name)[0])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    spec = study(
        tmp,
        name,
        trials=trials,
        keep_checkpoints=keep,
        max_concurrent=concurrency,
        resources={"cpus": 2 / concurrency},
        fixed={"payload_kb": 256, "sleep": 0.02},
        asha={"max_t": 4, "grace_period": 1, "reduction_factor": 2},
    )
    outcome = api.run(spec, out=io.StringIO())
    done.set()
    watcher.join()
    count, size = checkpoints(home, name)
    return {
        "trials": sum(outcome.counts.values()),
        "final": count,
        "peak": max(peak[0], count),
        "mb": size / 2**20,
        "s": time.monotonic() - started,
    }


def _reader(home: str, name: str, stop, counts) -> None:
    os.environ["HPSEARCH_HOME"] = home
    from studies import UserError, results

    while not stop.is_set():
        try:
            results(name)
            counts["reads"] += 1
        except UserError:
            pass  # no parent run yet
        except Exception as exc:
            key = "locked" if "database is locked" in str(exc) else "other"
            counts[key] += 1
            counts["last_error"] = str(exc).splitlines()[0][:200]
        time.sleep(0.2)


def sqlite_arm(home: Path, tmp: Path, trials: int) -> dict:
    from search import api

    manager = multiprocessing.Manager()
    counts = manager.dict(reads=0, locked=0, other=0, last_error="")
    stop = manager.Event()
    reader = multiprocessing.Process(target=_reader, args=(str(home), "sqlite8", stop, counts))
    reader.start()
    started = time.monotonic()
    error = None
    try:
        spec = study(
            tmp,
            "sqlite8",
            trials=trials,
            max_concurrent=8,
            resources={"cpus": 0.25},
            fixed={"payload_kb": 4, "sleep": 0.05},
            asha={"max_t": 10, "grace_period": 10},
        )
        outcome = api.run(spec, out=io.StringIO())
    except Exception as exc:
        outcome, error = None, str(exc).splitlines()[0][:200]
    stop.set()
    reader.join(timeout=30)
    rows = api.results("sqlite8") if outcome else []
    metrics = sum(int(r) for r in rows["epochs"].fillna(0)) if outcome else 0
    return {
        "trials": len(rows),
        "epochs_logged": metrics,
        "s": time.monotonic() - started,
        "driver_error": error,
        **dict(counts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200, help="trials per disk arm (default 200)")
    parser.add_argument("--keep", type=int, default=3, help="keep_checkpoints K of the GC arm (default 3)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sqlite-trials", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        os.environ["HPSEARCH_HOME"] = str(home)
        gc = disk_arm(home, tmp, "gc", args.trials, args.keep, args.concurrency)
        print(
            f"disk, keep_checkpoints={args.keep}: {gc['trials']} trials, {gc['final']} checkpoints at the end "
            f"(peak {gc['peak']}; K + concurrency = {args.keep + args.concurrency}), {gc['mb']:.1f} MB, "
            f"{gc['s']:.0f}s",
            flush=True,
        )
        keep_all = disk_arm(home, tmp, "nogc", args.trials, args.trials, args.concurrency)
        print(
            f"disk, no GC (keep_checkpoints={args.trials}): {keep_all['trials']} trials, {keep_all['final']} "
            f"checkpoints, {keep_all['mb']:.1f} MB, {keep_all['s']:.0f}s",
            flush=True,
        )
        print(f"disk ratio, no GC / GC: {keep_all['mb'] / max(gc['mb'], 1e-9):.1f}x the bytes", flush=True)
        sq = sqlite_arm(home, tmp, args.sqlite_trials)
        print(
            f"sqlite, 8 concurrent trials: {sq['trials']} trials, {sq['epochs_logged']} epochs logged in "
            f"{sq['s']:.0f}s; driver error: {sq['driver_error'] or 'none'}; reader: {sq['reads']} reads, "
            f"{sq['locked']} 'database is locked', {sq['other']} other errors {sq['last_error']}"
        )


if __name__ == "__main__":
    main()
