"""P2 (issue 4): wall time of `hpsearch run`, from start to exit, divided by the bare compute of its trials
(the sum of each trial's own training seconds, divided by the concurrent slots).

On CPU: 16 trials of about 2 s of CPU work each (torch matrix products, one thread, 4 epochs of 0.5 s),
2 at a time (1 CPU each), no pruning. With --gpu: 32 trials of the residual ConvNet on synthetic images
(benchmarks/synth.py, about 10 s of training each on an H100), 4 per GPU (0.25 GPU each), no pruning; a
compilation (`compile: auto`) counts in the wall time, not in the training seconds.
Each trial writes its training seconds to a file; the wall time is the `hpsearch run` subprocess's, start to
exit, as a user would see it (imports, Ray start, the sweep, the MLflow records, the results table).

    python benchmarks/p2_overhead.py
    python benchmarks/p2_overhead.py --gpu
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._sweep import run_study, sweep_seconds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="the GPU benchmark: residual ConvNet trials, 4 per GPU")
    parser.add_argument("--trials", type=int, help="default 16 on CPU, 32 with --gpu")
    parser.add_argument("--slots", type=int, help="trials at once: default 2 on CPU, 4 with --gpu")
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU: seconds of work per trial")
    parser.add_argument("--epochs", type=int, default=12, help="GPU: epochs of 20,000 images per trial")
    parser.add_argument("--compile", default="auto", choices=["auto", "graph", "on", "off"], help="GPU: the trials' compile")
    args = parser.parse_args()
    trials, slots = args.trials or (32 if args.gpu else 16), args.slots or (4 if args.gpu else 2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.gpu:
            epochs = args.epochs
            fixed = {"log_dir": str(tmp), "n_train": 20_000, "batch_size": 256, "compile": args.compile}
            spec = {"trainable": "benchmarks.synth:train", "metric": "val_accuracy", "mode": "max",
                    "space": {"lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True}},
                    "resources": {"cpus": 1, "gpus": 1 / slots}}  # fmt: skip
        else:
            epochs = 4
            fixed = {"burn_s": args.seconds / epochs, "log_dir": str(tmp)}
            spec = {"trainable": "benchmarks.burn:train", "metric": "loss", "mode": "min",
                    "space": {"x": {"type": "float", "low": -1.0, "high": 1.0}}, "resources": {"cpus": 1}}  # fmt: skip
        spec.update(name="p2", sampler="random", fixed=fixed, trials=trials, max_concurrent=slots,
                    asha={"max_t": epochs, "grace_period": epochs})  # fmt: skip
        wall, stdout = run_study(spec, tmp)
        seconds = [float(p.read_text()) for p in tmp.glob("train_s_*")]
        bare = sum(seconds) / slots
        print(f"{len(seconds)} trials, {sum(seconds):.1f} s of training in all ({min(seconds):.2f}..{max(seconds):.2f} s "
              f"each), {slots} slots: bare compute {bare:.1f} s")  # fmt: skip
        inside = sweep_seconds(stdout)
        if inside:
            print(f"of which the sweep itself (Ray start, trials, records): {inside} s; the rest is "
                  f"start-up and the results table")  # fmt: skip
        if args.gpu:
            # Packed trials time-slice one GPU, so Σ/slots overstates the compute when fewer trials run at once:
            # the whole run's images/s against one trial's alone (P1, P3) is the GPU's view of the overhead.
            rows = [json.loads(line) for f in tmp.glob("epochs_*.jsonl") for line in f.read_text().splitlines()]
            images = sum(r["images"] for r in rows)
            print(f"the whole run trained {images:,} images: {images / wall:,.0f} images/s from start to exit "
                  f"(compare one trial alone, benchmarks/p3_packing.py's 1-trial line)")  # fmt: skip
        target = "on a GPU <= 1.25x" if args.gpu else "on CPU <= 1.5x"
        print(f"P2: wall {wall:.1f} s / bare {bare:.1f} s = {wall / bare:.2f}x (target {target})")


if __name__ == "__main__":
    main()
