"""How long the morning's commands take, each beside a bare `python -c "import mlflow"` measured in the same
run (the floor of any command that reads MLflow). Each command runs as a user types it, the `hpsearch`
executable in a fresh process, against a small real store: one built-in study swept once (`hpsearch run
digits-mlp --trials 1`, made first unless --home names a data directory that holds it). Rounds alternate
the commands, so the machine's load falls on all alike; the median of the rounds is reported.

    python benchmarks/cli_startup.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = "digits-mlp"
BAD_STUDY = "name: x\ntrainable: digits-mlp\nspace: {lr: {type: float, low: 0.001, high: 0.1}}\nbudget: 3\n"


def _hpsearch(home: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "hpsearch"
    return subprocess.run(
        [str(exe), *args], env={**os.environ, "HPSEARCH_HOME": str(home)}, capture_output=True, text=True, timeout=900
    )


def _timed(command: list[str], home: Path, expect: int) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        command, env={**os.environ, "HPSEARCH_HOME": str(home)}, capture_output=True, text=True, timeout=300
    )
    seconds = time.perf_counter() - start
    if proc.returncode != expect:
        raise SystemExit(f"{' '.join(command[1:])}: exit {proc.returncode}, expected {expect}\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--home", type=Path, help=f"a data directory holding a sweep of {STUDY} (default: make one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp) / "home"
        if args.home is None:
            made = _hpsearch(home, "run", STUDY, "--trials", "1")
            if made.returncode != 0:
                raise SystemExit(made.stdout + made.stderr)
        trial = json.loads(_hpsearch(home, "results", STUDY, "--format", "json").stdout)[0]["trial_id"]
        bad = Path(tmp) / "bad.yaml"
        bad.write_text(BAD_STUDY)
        exe = str(Path(sys.executable).parent / "hpsearch")
        commands = {  # label -> (argv, expected exit code)
            'python -c "import mlflow"': ([sys.executable, "-c", "import mlflow"], 0),
            f"hpsearch results {STUDY}": ([exe, "results", STUDY], 0),
            f"hpsearch show {STUDY}": ([exe, "show", STUDY], 0),
            "hpsearch studies": ([exe, "studies"], 0),
            "hpsearch models": ([exe, "models"], 0),
            f"hpsearch logs {STUDY} TRIAL": ([exe, "logs", STUDY, trial], 0),
            f"hpsearch stop {STUDY} (none running)": ([exe, "stop", STUDY], 2),
            "hpsearch trainables": ([exe, "trainables"], 0),
            "hpsearch run bad.yaml (unknown key)": ([exe, "run", str(bad)], 2),
        }
        times: dict[str, list[float]] = {label: [] for label in commands}
        for _ in range(args.rounds):
            for label, (argv, expect) in commands.items():
                times[label].append(_timed(argv, home, expect))
    floor = statistics.median(times['python -c "import mlflow"'])
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}, median of {args.rounds} rounds"
    )
    print("\n| command | median s | x import mlflow |\n|---|---:|---:|")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"| `{label}` | {median:.2f} | {median / floor:.2f} |")


if __name__ == "__main__":
    main()
