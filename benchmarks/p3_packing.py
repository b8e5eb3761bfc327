"""P3 (issue 4): aggregate training throughput with 4 trials per GPU over 1 trial per GPU, through hpsearch.

Two `hpsearch run` sweeps of the residual ConvNet on synthetic images (benchmarks/synth.py), same trials:
- 1 trial per GPU: one trial, `gpus: 1`;
- 4 trials per GPU: four trials at once, `gpus: 0.25` each.
Each trial logs the end time of every epoch. Aggregate throughput = images trained in epochs after the first,
over the span from the first such epoch's start to the last one's end (across all of the sweep's trials),
so the start-up and compilation before a trial's first epoch are outside it. The ratio is printed last.

    python benchmarks/p3_packing.py                  # compile off: the eager loop, as in the GPU README
    python benchmarks/p3_packing.py --compile on     # CUDA graphs: one trial already keeps the GPU busier
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._sweep import run_study


def aggregate(log_dir: Path) -> tuple[float, int]:
    """(images/s over the steady span of all trials, trials)."""
    images, starts, ends, trials = 0, [], [], 0
    for path in log_dir.glob("epochs_*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        trials += 1
        starts.append(rows[0]["t"])  # the end of epoch 1 starts the steady span
        ends.append(rows[-1]["t"])
        images += sum(r["images"] for r in rows[1:])
    return images / (max(ends) - min(starts)), trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packed", type=int, default=4, help="trials per GPU in the packed sweep")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n", type=int, default=20_000, help="training images per epoch")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--compile", default="off", choices=["auto", "graph", "on", "off"])
    parser.add_argument("--cpu", action="store_true", help="a small run without a GPU (cpus instead of gpus)")
    args = parser.parse_args()
    rates = {}
    for per_gpu in (1, args.packed):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            share = {"cpus": 1} if args.cpu else {"cpus": 1, "gpus": 1 / per_gpu}
            spec = {
                "name": f"p3-{per_gpu}",
                "trainable": "benchmarks.synth:train",
                "metric": "val_accuracy",
                "mode": "max",
                "space": {"lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True}},
                "sampler": "random",
                "trials": per_gpu,
                "max_concurrent": per_gpu,
                "resources": share,
                "fixed": {"log_dir": str(tmp), "n_train": args.n, "batch_size": args.batch, "compile": args.compile},
                "asha": {"max_t": args.epochs, "grace_period": args.epochs},
            }
            run_study(spec, tmp)
            rates[per_gpu], trials = aggregate(tmp)
            print(f"{per_gpu} trial(s) per GPU: {trials} trials, {rates[per_gpu]:,.0f} images/s together")
    ratio = rates[args.packed] / rates[1]
    print(f"P3: {rates[args.packed]:,.0f} / {rates[1]:,.0f} images/s = {ratio:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
