"""Memory over a long sweep (issue 17): does a night of trials grow the driver or the Ray workers?

A 300-trial CPU sweep through `hpsearch run` of digits-autoencoder (a built-in on the image path: the data set
cache, the per-worker data cache and the resident-data cache all take part), 1 epoch a trial, 2 at a time. It
searches the architecture (kind conv/mlp, latent size) and the batch size, and also `limit` (examples per split),
which makes each trial a new data configuration as a searched image_size would: what grew the caches without bound.
While it runs, the driver's process tree is polled (psutil, every 0.5 s): the driver, and the Ray workers under
it (processes named ray::...). Printed: peak RSS so far when trial 30 and trial 300 finish, and the growth.
Target: growth under 10% after trial 30.

    nice python benchmarks/memory_sweep.py                          # this checkout
    nice python benchmarks/memory_sweep.py --root /tmp/oldtree      # another checkout (the code before)
    nice python benchmarks/memory_sweep.py --trials 40 --mark 10    # a quick look
    nice python benchmarks/memory_sweep.py --worker                 # the trials in this process, no Ray

--worker trains the same kind of trials one after another in one process, as a reused Ray worker does, and
prints its RSS beside its Python heap (tracemalloc): what the caches hold apart from native memory (torch's
and oneDNN's per-shape state, the allocator).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.5
MIB = 2**20


def _psutil():
    """psutil, or the copy Ray ships (Ray depends on it and vendors it) where it is not installed."""
    try:
        import psutil
    except ImportError:
        ray = importlib.util.find_spec("ray")
        sys.path.append(str(Path(ray.submodule_search_locations[0]) / "thirdparty_files"))
        import psutil
    return psutil


def spec(trials: int, slots: int) -> dict:
    return {
        "name": "memory-sweep",
        "trainable": "digits-autoencoder",
        "asha": None,
        "sampler": "random",
        "seed": 0,
        "trials": trials,
        "max_concurrent": slots,
        "resources": {"cpus": 1, "gpus": 0},
        "fixed": {"epochs": 1, "lr": 1.0e-3},
        "space": {
            "kind": {"type": "categorical", "choices": ["conv", "mlp"]},  # architecture
            "latent": {"type": "int", "low": 4, "high": 32, "log": True},  # architecture
            "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
            "limit": {"type": "int", "low": 100, "high": 1000},  # examples per split: a new data configuration
        },
    }


class Peaks:
    """Peak RSS (bytes) of the driver, of the largest Ray worker, and of all workers together, so far."""

    def __init__(self, driver: int):
        self.psutil = _psutil()
        self.driver = self.psutil.Process(driver)
        self.driver_peak = self.worker_peak = self.workers_peak = 0
        self.workers_seen: set[int] = set()

    def poll(self) -> None:
        try:
            self.driver_peak = max(self.driver_peak, self.driver.memory_info().rss)
            tree = self.driver.children(recursive=True)
        except self.psutil.Error:
            return
        total = 0
        for p in tree:
            try:
                if not (p.name().startswith("ray::") or " ".join(p.cmdline()[:1]).startswith("ray::")):
                    continue
                rss = p.memory_info().rss
            except self.psutil.Error:
                continue
            self.workers_seen.add(p.pid)
            self.worker_peak, total = max(self.worker_peak, rss), total + rss
        self.workers_peak = max(self.workers_peak, total)

    def snapshot(self) -> tuple[int, int, int]:
        return self.driver_peak, self.worker_peak, self.workers_peak


def sweep(root: Path, trials: int, slots: int, marks: list[int], tmp: Path) -> dict[int, tuple[int, int, int]]:
    """Run the sweep from checkout `root`; peak RSS so far at each trial count in `marks`."""
    path = tmp / "memory-sweep.yaml"
    path.write_text(yaml.safe_dump(spec(trials, slots)))
    # PYTHONPATH first: the checkout's packages win over the editable install (the Ray workers inherit it).
    env = {
        **os.environ,
        "HPSEARCH_HOME": str(tmp / "home"),
        "RAY_TMPDIR": str(tmp / "ray"),
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-c", "import sys; from search.cli import main; sys.exit(main())", "run", str(path)]
    run = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks, done, tail = Peaks(run.pid), [0], []

    def read() -> None:
        for line in run.stdout:
            tail[:] = [*tail[-40:], line]
            found = re.match(r"\[\s*(\d+)/\d+\]", line)
            if found:
                done[0] = max(done[0], int(found.group(1)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: dict[int, tuple[int, int, int]] = {}
    started = time.monotonic()
    while run.poll() is None:
        peaks.poll()
        for mark in marks:
            if mark not in seen and done[0] >= mark:
                seen[mark] = peaks.snapshot()
                print(f"trial {done[0]:>4} at {time.monotonic() - started:6.0f} s: " + _row(seen[mark]), flush=True)
        time.sleep(POLL_S)
    reader.join(timeout=10)
    if run.returncode != 0 or len(seen) < len(marks):
        sys.exit(f"hpsearch run ended with {run.returncode} after {done[0]} trials:\n{''.join(tail)}")
    print(f"{len(peaks.workers_seen)} Ray worker processes seen; sweep took {time.monotonic() - started:.0f} s")
    return seen


def worker(root: Path, trials: int, marks: list[int]) -> None:
    """The trials in this process, one after another: RSS and Python heap (MiB) at each mark."""
    import random
    import tracemalloc

    sys.path.insert(0, str(root))
    import torch

    from trainables import MemoryReporter, get_trainable

    torch.set_num_threads(1)  # as in a 1-CPU Ray trial
    trainable, rng, space = get_trainable("digits-autoencoder"), random.Random(0), spec(trials, 1)["space"]
    process = _psutil().Process()
    tracemalloc.start()
    for trial in range(1, trials + 1):
        config = {"epochs": 1, "lr": 1.0e-3, "kind": rng.choice(space["kind"]["choices"])}
        config.update({k: rng.randint(space[k]["low"], space[k]["high"]) for k in ("latent", "batch_size", "limit")})
        trainable.train(config, MemoryReporter(metric="val_loss", mode="min"))
        if trial in marks:
            print(
                f"trial {trial:>4}: RSS {process.memory_info().rss / MIB:.0f} MiB, Python heap "
                f"{tracemalloc.get_traced_memory()[0] / MIB:.1f} MiB",
                flush=True,
            )


def _row(peak: tuple[int, int, int]) -> str:
    return "driver {:.0f} MiB, largest worker {:.0f} MiB, all workers {:.0f} MiB".format(*(v / MIB for v in peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--mark", type=int, default=30, help="the trial count growth is measured from")
    parser.add_argument("--slots", type=int, default=2, help="trials at a time (1 CPU each)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to run (default: this one)")
    parser.add_argument("--worker", action="store_true", help="the trials in this process, without Ray")
    args = parser.parse_args()
    if args.worker:
        print(f"{args.root.resolve()}, {args.trials} trials in one process:")
        return worker(args.root.resolve(), args.trials, [args.mark, args.trials])
    with tempfile.TemporaryDirectory(prefix="mem", dir="/tmp") as tmp:  # short: Ray's socket paths < 107 bytes
        seen = sweep(args.root.resolve(), args.trials, args.slots, [args.mark, args.trials], Path(tmp))
    first, last = seen[args.mark], seen[args.trials]
    print(f"\nPeak RSS, {args.root.resolve()}, {args.trials} trials, {args.slots} at a time:")
    print(f"| process | at trial {args.mark} (MiB) | at trial {args.trials} (MiB) | growth |")
    print("|---|---|---|---|")
    for name, a, b in zip(("driver", "largest Ray worker", "all Ray workers"), first, last):
        print(f"| {name} | {a / MIB:.0f} | {b / MIB:.0f} | {100 * (b - a) / a:+.1f}% |")


if __name__ == "__main__":
    main()
