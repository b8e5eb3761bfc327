"""P2 (issue 4) on CPU: wall time of `hpsearch run`, from start to exit, divided by the bare compute of its
trials (the sum of each trial's own training seconds, divided by the concurrent slots).

16 trials of about 2 s of CPU work each (torch matrix products, one thread, 4 epochs of 0.5 s), 2 at a time
(1 CPU each), no pruning. Each trial writes the seconds it spent inside `train` to a file; the wall time is
the `hpsearch run` subprocess's, start to exit, as a user would see it (imports, Ray start, the sweep, the
MLflow records, the results table).

    python benchmarks/p2_overhead.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds of work per trial")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        epochs = 4
        spec = {
            "name": "p2", "trainable": "benchmarks.burn:train", "metric": "loss", "mode": "min",
            "space": {"x": {"type": "float", "low": -1.0, "high": 1.0}}, "sampler": "random",
            "fixed": {"burn_s": args.seconds / epochs, "log_dir": str(tmp)}, "trials": args.trials,
            "max_concurrent": args.slots, "resources": {"cpus": 1}, "asha": {"max_t": epochs, "grace_period": epochs},
        }  # fmt: skip
        path = tmp / "p2.yaml"
        path.write_text(yaml.safe_dump(spec))
        exe = Path(sys.executable).parent / "hpsearch"
        started = time.perf_counter()
        run = subprocess.run([str(exe), "run", str(path)], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "HPSEARCH_HOME": str(tmp / "home")})  # fmt: skip
        wall = time.perf_counter() - started
        if run.returncode != 0:
            sys.exit(f"hpsearch run failed:\n{run.stdout}\n{run.stderr}")
        seconds = [float(p.read_text()) for p in tmp.glob("train_s_*")]
        bare = sum(seconds) / args.slots
        print(f"{len(seconds)} trials, {sum(seconds):.1f} s of training in all ({min(seconds):.2f}..{max(seconds):.2f} s "
              f"each), {args.slots} slots: bare compute {bare:.1f} s")  # fmt: skip
        import re

        inside = re.search(r"finished in (\d+)s", run.stdout)
        if inside:  # from the sweep's start (after imports and plan) to its end, as `hpsearch run` prints it
            print(f"of which the sweep itself (Ray start, trials, records): {inside.group(1)} s; the rest is "
                  f"start-up and the results table")  # fmt: skip
        print(f"P2: wall {wall:.1f} s / bare {bare:.1f} s = {wall / bare:.2f}x (target on CPU <= 1.5x)")


if __name__ == "__main__":
    main()
