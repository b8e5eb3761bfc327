"""P2-long and P2-first (issue 15): the overhead a user feels, from the command to its exit.

P2-long: 64 trials of about 2 s of CPU work (benchmarks/burn.py: torch matrix products, one thread, 4
epochs of 0.5 s), 2 at a time (1 CPU each), no pruning. Figure: wall time from the command to its exit,
divided by the bare compute (the sum of each trial's own seconds in `train`, over the 2 slots). Three arms,
one after another in this run:
- cold:  `hpsearch run`, which starts its own Ray;
- warm:  `hpsearch run` against a local cluster already running (`ray start --head`, in a private temp dir
         so no other Ray on the machine is touched); timed on the second of two sweeps, the first warming it;
- stock: the same trials through plain Ray Tune + Ray's OptunaSearch + ASHA + MLflowLoggerCallback (sqlite),
         a script of its own that starts its own Ray, as a user wiring the three by hand would.
P2-first: seconds from the command to the first trial's first epoch starting (cold and warm).

    python benchmarks/p2_long.py
    python benchmarks/p2_long.py --trials 16     # a quick look
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._sweep import hpsearch_command  # noqa: E402

EPOCHS = 4

STOCK = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch
    from benchmarks.burn import burn

    def trainable(config):
        burn(config, lambda epoch, metrics: tune.report({{**metrics, "epoch": epoch}}))

    ray.init(include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {{"cpu": 1}}),
        param_space={{"x": tune.uniform(-1.0, 1.0), "epochs": {epochs}, "burn_s": {burn_s}, "log_dir": {log_dir!r}}},
        tune_config=tune.TuneConfig(metric="loss", mode="min", search_alg=OptunaSearch(seed=0),
                                    scheduler=ASHAScheduler(time_attr="epoch", max_t={epochs}, grace_period={epochs}),
                                    num_samples={trials}, max_concurrent_trials={slots}, reuse_actors=True),
        run_config=tune.RunConfig(storage_path={storage!r}, verbose=0, callbacks=[MLflowLoggerCallback(
            tracking_uri={tracking!r}, experiment_name="p2-stock")]),
    )
    tuner.fit()
""")


def spec(log_dir: Path, trials: int, slots: int, seconds: float) -> dict:
    return {
        "name": "p2long",
        "trainable": "benchmarks.burn:train",
        "metric": "loss",
        "mode": "min",
        "space": {"x": {"type": "float", "low": -1.0, "high": 1.0}},
        "resources": {"cpus": 1},
        "sampler": "random",
        "fixed": {"burn_s": seconds / EPOCHS, "log_dir": str(log_dir)},
        "trials": trials,
        "max_concurrent": slots,
        "asha": {"max_t": EPOCHS, "grace_period": EPOCHS},
    }


def timed(command: list[str], env: dict, log_dir: Path) -> tuple[float, float, list[float]]:
    """(wall seconds, seconds to the first trial's start, each trial's training seconds) of one command."""
    log_dir.mkdir(parents=True)
    started = time.time()
    run = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.time() - started
    if run.returncode != 0:
        sys.exit(f"{command} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    first = min(float(p.read_text()) for p in log_dir.glob("start_*")) - started
    return wall, first, [float(p.read_text()) for p in log_dir.glob("train_s_*")]


def line(name: str, wall: float, first: float, seconds: list[float], slots: int) -> float:
    bare = sum(seconds) / slots
    print(
        f"{name:>5}: {len(seconds)} trials, bare {bare:.1f} s, wall {wall:.1f} s = {wall / bare:.2f}x; "
        f"first trial started {first:.1f} s after the command",
        flush=True,
    )
    return wall / bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of work per trial")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2l") as tmp:
        tmp = Path(tmp)
        results = {}
        # cold: hpsearch starts its own Ray (no cluster file where it looks)
        cold_env = {"HPSEARCH_HOME": str(tmp / "home-cold"), "RAY_TMPDIR": str(tmp / "none")}
        path = tmp / "cold.yaml"
        path.write_text(yaml.safe_dump(spec(tmp / "cold", args.trials, args.slots, args.seconds)))
        results["cold"] = timed([*hpsearch_command(), "run", str(path)], cold_env, tmp / "cold")
        # warm: a local head, started with Ray's own command, in a temp dir of its own
        ray_tmp = tempfile.mkdtemp(prefix="p2r", dir="/tmp")  # short: Ray's socket paths < 107 bytes
        head = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"),
                "start",
                "--head",
                "--block",
                "--num-cpus",
                str(args.slots),
                "--include-dashboard=false",
                "--port",
                "0",
                "--disable-usage-stats",
            ],
            env={**os.environ, "RAY_TMPDIR": ray_tmp},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 120
            while not (Path(ray_tmp) / "ray" / "ray_current_cluster").exists() and time.time() < deadline:
                time.sleep(0.5)
            time.sleep(3)
            warm_env = {"RAY_TMPDIR": ray_tmp}
            for round_ in ("warmup", "warm"):
                path = tmp / f"{round_}.yaml"
                path.write_text(yaml.safe_dump(spec(tmp / round_, args.trials, args.slots, args.seconds)))
                results[round_] = timed(
                    [*hpsearch_command(), "run", str(path)],
                    {**warm_env, "HPSEARCH_HOME": str(tmp / f"home-{round_}")},
                    tmp / round_,
                )
        finally:
            os.killpg(head.pid, signal.SIGTERM)
            try:
                head.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
        # stock: Ray Tune + OptunaSearch + ASHA + MLflowLoggerCallback, wired by hand
        script = tmp / "stock.py"
        script.write_text(
            STOCK.format(
                root=str(ROOT),
                epochs=EPOCHS,
                burn_s=args.seconds / EPOCHS,
                log_dir=str(tmp / "stock"),
                trials=args.trials,
                slots=args.slots,
                storage=str(tmp / "stock-ray"),
                tracking=f"sqlite:///{tmp}/stock.db",
            )
        )
        results["stock"] = timed([sys.executable, str(script)], {"RAY_TMPDIR": str(tmp / "none")}, tmp / "stock")
        print(f"P2-long ({args.trials} trials of {args.seconds:g} s, {args.slots} slots), wall / bare compute:")
        ratios = {name: line(name, *results[name], args.slots) for name in ("cold", "warmup", "warm", "stock")}
        print(
            f"P2-long: cold {ratios['cold']:.2f}x (target <= 1.25x), warm {ratios['warm']:.2f}x (target <= 1.10x), "
            f"stock {ratios['stock']:.2f}x"
        )
        print(f"P2-first: cold {results['cold'][1]:.1f} s, warm {results['warm'][1]:.1f} s (target warm <= 5 s)")


if __name__ == "__main__":
    main()
