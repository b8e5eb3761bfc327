"""P3-sweep (issue 15): images trained per second of sweep wall time, hpsearch against stock, for the same
32-trial study on one GPU.

The study is P2-GPU's (benchmarks/p2_overhead.py --gpu): 32 trials of the residual ConvNet on synthetic
32x32x3 images (benchmarks/synth.py), 12 epochs of 20,000 images each, batch 256, Adam, lr searched in
[3e-4, 3e-3] (log), no pruning (ASHA with grace period = max_t), MLflow records. Arms, one after another:
- hpsearch: `hpsearch run` of the study, 4 trials per GPU (0.25 GPU each), `compile: auto`, timed from
  the command to its exit. With `--hpsearch-from FILE` the arm is the P2-GPU sweep recorded in the same
  GPU call (`p2_overhead.py --gpu --record FILE`), the same study, so it is not run twice; without it, or
  if the file is missing, it is run here.
- stock: a script of its own, as a user wiring the pieces by hand would: plain Ray Tune + Ray's
  OptunaSearch + ASHAScheduler + MLflowLoggerCallback (sqlite), `reuse_actors=True`, running the course's
  DataLoader loop (benchmarks/p1_throughput.py's: a Dataset that converts, flips, crops and normalises each
  image on the host, a DataLoader with 4 workers and pinned memory, the eager fp32 model, `.item()` on every
  step's loss; validation through a DataLoader each epoch). Run at 0.25, 0.5 and 1 GPU per trial (1/p
  trials at once); its best is kept. `--budget` caps each stock arm with Tune's `time_budget_s` (one value,
  or one per packing): an arm that hits it is reported as PARTIAL, its images so far over its wall time.
  Start-up weighs more in a short wall, so a partial arm's rate is low by roughly its start-up share; the
  script says so when a partial arm comes within 25% of the best, which then needs a rerun with more budget.
Images trained = completed epochs x 20,000, counted the same way in both arms.
    P3-sweep = hpsearch images/s / stock's best images/s    target >= 5x

STATUS: ready but not yet measured on a GPU (issue 15); checked on a CPU with --cpu-check. The GPU session
runs it through `bash benchmarks/gpu_run.sh`, after P2-GPU, whose sweep is the hpsearch arm.

    python benchmarks/p3_sweep.py                                          # on a GPU, all arms
    python benchmarks/p3_sweep.py --hpsearch-from p2gpu.json --budget 160,70,50   # as gpu_run.sh runs it
    python benchmarks/p3_sweep.py --cpu-check                              # tiny, on a CPU (3.5 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._sweep import run_study  # noqa: E402
from benchmarks.p2_overhead import CPU_CHECK, GPU_STUDY, epoch_rows, gpu_spec  # noqa: E402

STOCK = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    def trainable(config):
        sys.path.insert(0, {root!r})
        from benchmarks.p3_sweep import course_trial
        course_trial(config, tune.get_context().get_trial_id(), lambda metrics: tune.report(metrics))

    ray.init(include_dashboard=False, log_to_driver=False, num_cpus={num_cpus})
    tuner = tune.Tuner(
        tune.with_resources(trainable, {resources!r}),
        param_space={{"lr": tune.loguniform(3e-4, 3e-3), **{fixed!r}}},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", search_alg=OptunaSearch(seed=0),
                                    scheduler=ASHAScheduler(time_attr="epoch", max_t={epochs}, grace_period={epochs}),
                                    num_samples={trials}, max_concurrent_trials={slots}, reuse_actors=True,
                                    time_budget_s={budget}),
        run_config=tune.RunConfig(storage_path={storage!r}, verbose=0, callbacks=[MLflowLoggerCallback(
            tracking_uri={tracking!r}, experiment_name="p3-stock")]),
    )
    grid = tuner.fit()
    if grid.errors:  # a failed trial would only lower the count of images: fail loudly instead
        sys.exit(f"{{len(grid.errors)}} stock trial(s) failed; the first: {{grid.errors[0]!r}}")
""")


def course_trial(config: dict, key: str, report) -> None:
    """One stock trial: the course's DataLoader loop (benchmarks/p1_throughput.py), validated each epoch.
    Appends each epoch's end time and images to `log_dir/stock_epochs_<trial>.jsonl`."""
    import torch

    from benchmarks.p1_throughput import MEAN, STD, CourseDataset, course_epoch
    from benchmarks.synth import images, model

    n, batch, epochs, workers = config["n_train"], config["batch_size"], config["epochs"], config["workers"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x, y = images(n + 2_000)  # made once per worker process (reuse_actors keeps it for the next trials)
    net = model({}).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config["lr"])
    loader = torch.utils.data.DataLoader(
        CourseDataset(x[:n], y[:n]),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
    )
    val = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset((x[n:].float() / 255 - MEAN) / STD, y[n:]), batch_size=1024
    )
    log = Path(config["log_dir"]) / f"stock_epochs_{key}.jsonl"
    for epoch in range(1, epochs + 1):
        rate, train_loss = course_epoch(net, optimizer, loader, device)
        net.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in val:
                correct += (net(xb.to(device)).argmax(1) == yb.to(device)).sum().item()
        with open(log, "a") as f:
            f.write(json.dumps({"t": time.time(), "images": n, "samples_per_s": rate, "epoch": epoch}) + "\n")
        report({"val_accuracy": correct / len(val.dataset), "train_loss": train_loss, "epoch": epoch})


def stock_arm(tmp: Path, study: dict, share: float, budget: float | None, workers: int, cpu: bool) -> dict:
    """Run the stock script at `share` GPU per trial; its wall, images and finished trials."""
    slots = round(1 / share)
    log_dir = tmp / f"stock-{share:g}"
    log_dir.mkdir()
    resources = {"cpu": 1} if cpu else {"cpu": 1, "gpu": share}
    fixed = {
        "n_train": study["n"],
        "batch_size": study["batch"],
        "epochs": study["epochs"],
        "workers": workers,
        "log_dir": str(log_dir),
    }
    script = log_dir / "stock.py"
    script.write_text(
        STOCK.format(
            root=str(ROOT),
            num_cpus=slots if cpu else None,
            resources=resources,
            fixed=fixed,
            epochs=study["epochs"],
            trials=study["trials"],
            slots=slots,
            budget=budget,
            storage=str(log_dir / "ray"),
            tracking=f"sqlite:///{log_dir}/mlflow.db",
        )
    )
    started = time.perf_counter()
    run = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, env=_env(tmp))
    wall = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"the stock arm at {share:g} GPU failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    rows = [[json.loads(line) for line in f.read_text().splitlines()] for f in log_dir.glob("stock_epochs_*.jsonl")]
    done = sum(len(r) == study["epochs"] for r in rows)
    return {
        "wall": wall,
        "images": sum(len(r) for r in rows) * study["n"],
        "done": done,
        "partial": done < study["trials"],
    }


def hpsearch_arm(tmp: Path, study: dict, compile_mode: str, cpu: bool, recorded: Path | None) -> dict:
    if recorded is not None and recorded.exists():
        record = json.loads(recorded.read_text())
        mismatch = [k for k in (*study, "compile") if record.get(k) != {**study, "compile": compile_mode}[k]]
        if record.get("cpu_check") != cpu or mismatch:
            sys.exit(
                f"{recorded} is a different study ({', '.join(mismatch) or 'cpu_check'}): run without --hpsearch-from"
            )
        print(f"hpsearch arm: the P2-GPU sweep recorded in {recorded}", flush=True)
        return {"wall": record["wall"], "images": record["images"], "done": record["trials_done"], "partial": False}
    if recorded is not None:
        print(f"{recorded} is missing (P2-GPU did not finish?): running the hpsearch arm here", flush=True)
    log_dir = tmp / "hpsearch"
    log_dir.mkdir()
    os.environ.update(_env(tmp))
    wall, _ = run_study(gpu_spec(log_dir, study, compile_mode, cpu, name="p3sweep"), log_dir)
    rows = epoch_rows(log_dir)
    return {
        "wall": wall,
        "images": sum(len(r) for r in rows) * study["n"],
        "done": sum(len(r) == study["epochs"] for r in rows),
        "partial": False,
    }


def _env(tmp: Path) -> dict:
    """The arms' environment: the repository importable, and a private Ray temp dir, so that neither arm
    joins a Ray cluster someone else started on the machine."""
    ray_tmp = tmp / "r"
    ray_tmp.mkdir(exist_ok=True)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "RAY_TMPDIR": str(ray_tmp)}


def line(name: str, arm: dict, study: dict, budget: float | None) -> float:
    rate = arm["images"] / arm["wall"]
    cut = f" (PARTIAL: the {budget:g} s budget ended it)" if arm["partial"] else ""
    print(
        f"{name}: {arm['done']}/{study['trials']} trials, {arm['images']:,} images trained, wall {arm['wall']:.1f} s: "
        f"{rate:,.0f} images/s{cut}",
        flush=True,
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-check", action="store_true", help="the same code, tiny, on the CPU (not a measurement)")
    parser.add_argument("--trials", type=int, help="default 32")
    parser.add_argument("--epochs", type=int, help="default 12")
    parser.add_argument("--n", type=int, help="training images per epoch, default 20,000")
    parser.add_argument("--batch", type=int, help="default 256")
    parser.add_argument("--slots", type=int, help="hpsearch's trials per GPU, default 4")
    parser.add_argument("--compile", default="auto", choices=["auto", "graph", "on", "off"], help="hpsearch's compile")
    parser.add_argument("--packings", default="0.25,0.5,1", help="stock's GPU shares per trial, comma-separated")
    parser.add_argument(
        "--workers", type=int, help="stock's DataLoader workers per trial (default 4; 1 with --cpu-check)"
    )
    parser.add_argument(
        "--budget",
        help="seconds each stock arm may run (Tune's time_budget_s): one value, or one per packing, comma-separated",
    )
    parser.add_argument("--hpsearch-from", type=Path, help="the P2-GPU sweep's record (p2_overhead.py --record)")
    args = parser.parse_args()
    base = CPU_CHECK if args.cpu_check else GPU_STUDY
    given = {"trials": args.trials, "slots": args.slots, "epochs": args.epochs, "n": args.n, "batch": args.batch}
    study = {k: given[k] or base[k] for k in base}
    workers = args.workers if args.workers is not None else (1 if args.cpu_check else 4)
    if args.cpu_check:
        print("CPU CHECK: the GPU benchmark's code on the CPU with a tiny study; the figures mean nothing", flush=True)
    else:
        import torch

        if not torch.cuda.is_available():
            sys.exit("P3-sweep needs a CUDA GPU; use --cpu-check to run the same code on a CPU")
        print(f"device: {torch.cuda.get_device_name()}, {os.cpu_count()} CPUs", flush=True)
    print(
        f"study: {study['trials']} trials x {study['epochs']} epochs x {study['n']:,} images, batch {study['batch']}; "
        f"hpsearch {study['slots']} per GPU, compile {args.compile}; stock DataLoader workers {workers}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="p3s", dir="/tmp") as tmp:  # short: Ray's socket paths < 107 bytes
        tmp = Path(tmp)
        arm = hpsearch_arm(tmp, study, args.compile, args.cpu_check, args.hpsearch_from)
        ours = line(f"hpsearch, {1 / study['slots']:g} GPU per trial", arm, study, None)
        shares = [float(p) for p in args.packings.split(",")]
        budgets = [float(b) for b in args.budget.split(",")] if args.budget else [None]
        budgets = budgets * len(shares) if len(budgets) == 1 else budgets
        if len(budgets) != len(shares):
            sys.exit(f"--budget: {len(budgets)} values for {len(shares)} packings")
        stock = {}
        for share, budget in zip(shares, budgets):
            arm = stock_arm(tmp, study, share, budget, workers, args.cpu_check)
            stock[share] = (line(f"stock, {share:g} GPU per trial", arm, study, budget), arm["partial"])
        share = max(stock, key=lambda s: stock[s][0])
        best, partial = stock[share]
        close = [f"{s:g}" for s, (rate, cut) in stock.items() if cut and s != share and rate > 0.75 * best]
        if close:
            print(
                f"NOTE: the partial stock arm(s) at {', '.join(close)} GPU came within 25% of the best; start-up "
                f"weighs more in a cut sweep, so rerun them with a larger --budget before trusting the best"
            )
        note = "; stock's best is a PARTIAL sweep" if partial else ""
        note += "; CPU CHECK, not a measurement" if args.cpu_check else ""
        print(
            f"P3-sweep: hpsearch {ours:,.0f} / stock's best {best:,.0f} images/s (at {share:g} GPU per trial) = "
            f"{ours / best:.2f}x (target >= 5x{note})"
        )


if __name__ == "__main__":
    main()
