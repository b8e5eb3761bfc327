"""MLflow time per trial on the embedded sqlite store: the default rollback journal against WAL with
synchronous=NORMAL (what hpsearch now uses), measured side by side: two stores in one process, trials
alternating between them (ABBA order), so the machine's load falls on both alike.

Each trial is what the driver's recorder writes for a 10-epoch trial: a child run with its params, 10
epochs of 2 metrics, its end state and best value.

    python benchmarks/sqlite_wal.py --trials 300
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=300)
    args = parser.parse_args()
    from tracking import Store, StudyRecorder, _store

    recorders = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in ("journal", "wal"):
            store = Store(home=Path(tmp) / arm)
            enable = _store._sqlite_wal
            if arm == "journal":  # sqlite's default: the client is created without registering the file
                _store._sqlite_wal = lambda path: None
            store.client  # noqa: B018 - creates the store's tables, in the arm's journal mode
            _store._sqlite_wal = enable
            recorder = StudyRecorder(store, "bench", {})
            recorder.start({"trials": args.trials}, "name: bench\n", "bench")
            recorders[arm] = recorder
        times = {arm: [] for arm in recorders}
        for i in range(args.trials):
            for arm in ("journal", "wal") if i % 2 else ("wal", "journal"):
                recorder, trial = recorders[arm], f"t{i:05d}"
                start = time.perf_counter()
                recorder.trial_started(trial, {"lr": 0.01, "batch_size": 64, "optimizer": "adam"})
                for epoch in range(1, 11):
                    recorder.trial_result(trial, epoch, {"val_accuracy": 0.5 + epoch / 40, "train_loss": 1 / epoch})
                recorder.trial_ended(trial, "completed", {"hpsearch.epochs": 10, "best_value": 0.75})
                times[arm].append(time.perf_counter() - start)
        import sqlite3

        for arm, recorder in recorders.items():
            mode = sqlite3.connect(recorder.store.db_path).execute("PRAGMA journal_mode").fetchone()[0]
            assert mode == ("wal" if arm == "wal" else "delete"), (arm, mode)
        for arm, values in times.items():
            print(
                f"{arm}: median {1000 * statistics.median(values):.1f} ms per trial, "
                f"mean {1000 * statistics.mean(values):.1f} ms ({len(values)} trials)"
            )
        ratio = statistics.median(times["journal"]) / statistics.median(times["wal"])
        print(f"journal / wal: {ratio:.2f}x the time per trial")


if __name__ == "__main__":
    main()
