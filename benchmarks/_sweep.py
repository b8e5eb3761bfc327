"""Run `hpsearch run` on a spec dict as a user would (a subprocess, timed start to exit): for the P2/P3 scripts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def hpsearch_command() -> list[str]:
    """The installed `hpsearch` script, or the same entry point through this Python (a machine where the
    package is on PYTHONPATH but not installed, such as a lent GPU)."""
    exe = Path(sys.executable).parent / "hpsearch"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("hpsearch")
    return [found] if found else [sys.executable, "-c", "import sys; from search.cli import main; sys.exit(main())"]


def run_study(spec: dict, tmp: Path) -> tuple[float, str]:
    """(wall seconds of `hpsearch run`, its stdout). Exits with hpsearch's output if the run fails."""
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    run = subprocess.run(
        [*hpsearch_command(), "run", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HPSEARCH_HOME": str(tmp / "home")},
    )
    wall = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"hpsearch run failed:\n{run.stdout}\n{run.stderr}")
    return wall, run.stdout


def sweep_seconds(stdout: str) -> int | None:
    """From the sweep's start (after imports and plan) to its end, as `hpsearch run` prints it."""
    found = re.search(r"finished in (\d+)s", stdout)
    return int(found.group(1)) if found else None
