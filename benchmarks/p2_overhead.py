"""P2 (issue 4) and P2-GPU (issue 15): the overhead of `hpsearch run`, from the command to its exit.

On CPU (P2): 16 trials of about 2 s of CPU work each (torch matrix products, one thread, 4 epochs of 0.5 s),
2 at a time (1 CPU each), no pruning. Figure: wall time divided by the bare compute of its trials (the sum of
each trial's own training seconds, divided by the concurrent slots).

With --gpu (P2-GPU): 32 trials of the residual ConvNet on synthetic images (benchmarks/synth.py: 12 epochs
of 20,000 images, batch 256, `compile: auto`), 4 per GPU (0.25 GPU each), no pruning. Packed trials
time-slice one GPU, so Σ(trial seconds)/slots counts idle slots as work. In the same run, first the best
single-trial images/s is measured, one trial alone on the GPU with the sweep's configuration, two ways:
- `hpsearch run` of the same study with 1 trial (the same loop, inside a Ray worker);
- the trainable called directly in a fresh process (the loop the sweep uses, no Ray), told it is one of
  trials/slots trials in its worker as a sweep's worker is, so `compile: auto` decides as in the sweep.
Each one's rate is the median of its epochs after the first (training time only, as the loop's
`samples_per_s`), and the higher of the two is "the best". Then the 32-trial packed sweep runs, and
    P2-GPU = sweep wall (command to exit) / (images trained / best single-trial images/s)    target <= 1.15x
i.e. the wall time against the time one trial alone would need to train the same images: start-up,
compilation, validation, checkpoints, records and idle GPU all count as overhead. Images trained = trials x
epochs x n (the study's images per epoch, as both P3-sweep arms count them). `--record FILE` writes the
sweep's wall and images as JSON for benchmarks/p3_sweep.py's hpsearch arm (`--hpsearch-from`).

STATUS: the GPU mode is ready but not yet measured on a GPU (issue 15); it was checked on a CPU with
--cpu-check. The GPU session runs it through `bash benchmarks/gpu_run.sh` (about 2.5 minutes on an H200).

    python benchmarks/p2_overhead.py                       # P2 on CPU
    python benchmarks/p2_overhead.py --gpu                 # P2-GPU
    python benchmarks/p2_overhead.py --gpu --cpu-check     # the GPU mode's code, tiny, on a CPU (about 1.5 min)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._sweep import run_study, sweep_seconds  # noqa: E402

# The GPU study (P2-GPU, and P3-sweep's hpsearch arm): trials x epochs x n images of batch `batch`.
GPU_STUDY = {"trials": 32, "slots": 4, "epochs": 12, "n": 20_000, "batch": 256}
# The same code path, tiny, on a CPU: a check that the scripts run, not a measurement.
CPU_CHECK = {"trials": 4, "slots": 2, "epochs": 2, "n": 256, "batch": 64}

DIRECT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    import torch
    from benchmarks import synth
    from trainables import MemoryReporter
    if {cpu!r}:
        torch.set_num_threads(1)  # as a 1-CPU Ray worker
    reporter = MemoryReporter(metric="val_accuracy", mode="max")
    reporter.trials_per_worker = {per_worker}  # as the sweep's worker: what `auto` amortises a compilation over
    synth.train({config!r}, reporter)
    print(json.dumps([{{k: r.get(k) for k in ("samples_per_s", "compile_s", "step_graph")}} for r in reporter.results]))
""")


def gpu_spec(
    log_dir: Path,
    study: dict,
    compile_mode: str,
    cpu: bool,
    trials: int | None = None,
    slots: int | None = None,
    name: str = "p2gpu",
) -> dict:
    """The hpsearch spec of the GPU study (one trial alone with trials=slots=1)."""
    trials, slots = trials or study["trials"], slots or study["slots"]
    share = {"cpus": 1} if cpu else {"cpus": 1, "gpus": 1 / study["slots"]}  # the sweep's share, alone or not
    return {
        "name": name,
        "trainable": "benchmarks.synth:train",
        "metric": "val_accuracy",
        "mode": "max",
        "space": {"lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True}},
        "sampler": "random",
        "resources": share,
        "trials": trials,
        "max_concurrent": slots,
        "fixed": {
            "log_dir": str(log_dir),
            "n_train": study["n"],
            "batch_size": study["batch"],
            "compile": compile_mode,
        },
        "asha": {"max_t": study["epochs"], "grace_period": study["epochs"]},
    }


def epoch_rows(log_dir: Path) -> list[list[dict]]:
    """Each trial's epoch rows (benchmarks/synth.py's epochs_*.jsonl), one list per trial."""
    return [[json.loads(line) for line in f.read_text().splitlines()] for f in sorted(log_dir.glob("epochs_*.jsonl"))]


def steady_rate(rates: list[float]) -> float:
    """Median images/s of the epochs after the first (all of them if there is only one)."""
    return statistics.median(rates[1:] or rates)


def per_epoch(rows: list[dict]) -> str:
    return ", ".join(f"{r['samples_per_s']:,.0f}" for r in rows)


def single_trial(tmp: Path, study: dict, compile_mode: str, cpu: bool, ways: list[str]) -> dict[str, float]:
    """One trial alone with the sweep's configuration, steady images/s by each way measured."""
    rates = {}
    if "hpsearch" in ways:
        log_dir = tmp / "single"
        log_dir.mkdir()
        wall, _ = run_study(gpu_spec(log_dir, study, compile_mode, cpu, trials=1, slots=1, name="p2single"), log_dir)
        (rows,) = epoch_rows(log_dir)
        rates["hpsearch"] = steady_rate([r["samples_per_s"] for r in rows])
        print(
            f"one trial alone, `hpsearch run` of 1 trial: {per_epoch(rows)} "
            f"images/s per epoch; steady {rates['hpsearch']:,.0f}/s (that run's wall {wall:.1f} s)",
            flush=True,
        )
    if "direct" in ways:
        per_worker = math.ceil(study["trials"] / study["slots"])
        config = {
            "n_train": study["n"],
            "batch_size": study["batch"],
            "epochs": study["epochs"],
            "compile": compile_mode,
            "lr": 1e-3,
        }
        script = DIRECT.format(root=str(ROOT), cpu=cpu, per_worker=per_worker, config=config)
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"the direct single-trial run failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        rows = json.loads(run.stdout.strip().splitlines()[-1])
        rates["direct"] = steady_rate([r["samples_per_s"] for r in rows])
        how = "one CUDA graph per step" if rows[0].get("step_graph") else "eager steps"
        compile_s = sum(r.get("compile_s") or 0.0 for r in rows)
        print(
            f"one trial alone, the trainable called directly ({how}, {compile_s:.1f} s compiling): "
            f"{per_epoch(rows)} images/s per epoch; steady "
            f"{rates['direct']:,.0f}/s (process {time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="P2-GPU: residual ConvNet trials, 4 per GPU")
    parser.add_argument("--cpu-check", action="store_true", help="with --gpu: the same code, tiny, on the CPU")
    parser.add_argument("--trials", type=int, help="default 16 on CPU, 32 with --gpu")
    parser.add_argument("--slots", type=int, help="trials at once: default 2 on CPU, 4 with --gpu")
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU: seconds of work per trial")
    parser.add_argument("--epochs", type=int, help="GPU: epochs per trial (default 12)")
    parser.add_argument("--n", type=int, help="GPU: training images per epoch (default 20,000)")
    parser.add_argument("--batch", type=int, help="GPU: batch size (default 256)")
    parser.add_argument(
        "--compile", default="auto", choices=["auto", "graph", "on", "off"], help="GPU: the trials' compile"
    )
    parser.add_argument(
        "--single",
        default="hpsearch,direct",
        help="GPU: how one trial alone is measured, "
        "comma-separated: hpsearch (a 1-trial run), direct (the trainable in a fresh process)",
    )
    parser.add_argument(
        "--record", type=Path, help="GPU: write the sweep's wall and images here (JSON), for p3_sweep.py"
    )
    args = parser.parse_args()
    if args.gpu:
        gpu_main(args)
        return
    trials, slots = args.trials or 16, args.slots or 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        epochs = 4
        spec = {
            "name": "p2",
            "trainable": "benchmarks.burn:train",
            "metric": "loss",
            "mode": "min",
            "space": {"x": {"type": "float", "low": -1.0, "high": 1.0}},
            "resources": {"cpus": 1},
            "sampler": "random",
            "fixed": {"burn_s": args.seconds / epochs, "log_dir": str(tmp)},
            "trials": trials,
            "max_concurrent": slots,
            "asha": {"max_t": epochs, "grace_period": epochs},
        }
        wall, stdout = run_study(spec, tmp)
        seconds = [float(p.read_text()) for p in tmp.glob("train_s_*")]
        bare = sum(seconds) / slots
        print(
            f"{len(seconds)} trials, {sum(seconds):.1f} s of training in all ({min(seconds):.2f}..{max(seconds):.2f} s "
            f"each), {slots} slots: bare compute {bare:.1f} s"
        )
        inside = sweep_seconds(stdout)
        if inside:
            print(
                f"of which the sweep itself (Ray start, trials, records): {inside} s; the rest is "
                f"start-up and the results table"
            )
        print(f"P2: wall {wall:.1f} s / bare {bare:.1f} s = {wall / bare:.2f}x (target on CPU <= 1.5x)")


def gpu_main(args) -> None:
    base = CPU_CHECK if args.cpu_check else GPU_STUDY
    given = {"trials": args.trials, "slots": args.slots, "epochs": args.epochs, "n": args.n, "batch": args.batch}
    study = {k: given[k] or base[k] for k in base}
    cpu = args.cpu_check
    if not cpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA GPU; use --gpu --cpu-check to run the same code on a CPU")
        print(f"device: {torch.cuda.get_device_name()}", flush=True)
    else:
        print("CPU CHECK: the GPU mode's code on the CPU with a tiny study; the figures mean nothing", flush=True)
    print(
        f"study: {study['trials']} trials x {study['epochs']} epochs x {study['n']:,} images, batch "
        f"{study['batch']}, compile {args.compile}, {study['slots']} at a time",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="p2g", dir="/tmp") as tmp:  # short: Ray's socket paths < 107 bytes
        tmp = Path(tmp)
        # A private Ray temp dir: hpsearch starts its own Ray (cold) rather than join one someone else started.
        (tmp / "r").mkdir()
        os.environ["RAY_TMPDIR"] = str(tmp / "r")
        rates = single_trial(tmp, study, args.compile, cpu, [w for w in args.single.split(",") if w])
        best_way = max(rates, key=rates.get)
        best = rates[best_way]
        log_dir = tmp / "sweep"
        log_dir.mkdir()
        wall, stdout = run_study(gpu_spec(log_dir, study, args.compile, cpu), log_dir)
        trials = epoch_rows(log_dir)
        images = sum(len(rows) for rows in trials) * study["n"]
        seconds = [float(p.read_text()) for p in log_dir.glob("train_s_*")]
        print(
            f"the packed sweep: {len(trials)} trials, {images:,} images trained, wall {wall:.1f} s (command to "
            f"exit): {images / wall:,.0f} images/s",
            flush=True,
        )
        inside = sweep_seconds(stdout)
        if inside:
            print(f"of which the sweep itself (Ray start, trials, records): {inside} s")
        bare = sum(seconds) / study["slots"]
        print(
            f"(issue 4's P2 on these trials: wall / (Σ trial seconds {sum(seconds):.1f} / {study['slots']} slots) = "
            f"{wall / bare:.2f}x; counts idle packed slots as work)"
        )
        if args.record:
            args.record.write_text(
                json.dumps(
                    {
                        **study,
                        "compile": args.compile,
                        "cpu_check": cpu,
                        "wall": wall,
                        "images": images,
                        "trials_done": len(trials),
                    }
                )
            )
        alone = images / best
        target = "target <= 1.15x" + ("; CPU CHECK, not a measurement" if cpu else "")
        print(
            f"P2-GPU: wall {wall:.1f} s / ({images:,} images / {best:,.0f} images/s, the best single trial "
            f"({best_way}) = {alone:.1f} s) = {wall / alone:.2f}x ({target})"
        )


if __name__ == "__main__":
    main()
