"""P6 (issue 14): control-plane time per trial at trial 1,000 against an MLflow server on PostgreSQL, beside
the embedded sqlite default, measured the way P5 measures it (benchmarks/p5_control_plane.py), in one run.

It starts a private PostgreSQL and an `mlflow server` on it (tests/services.py, the same ones the tests use),
runs P5's loop against the server and then against sqlite, and prints both and their ratio.

    python benchmarks/p6_server.py              # 1,000 trials each
    python benchmarks/p6_server.py --trials 200
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from p5_control_plane import measure  # noqa: E402

from tests.services import mlflow_server, postgres  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still stops its servers
    last = slice(max(0, args.trials - 100), args.trials)
    with postgres("p6") as pg, tempfile.TemporaryDirectory() as artifacts, mlflow_server(pg.uri, artifacts) as server:
        served = statistics.median(measure(args.trials, server.uri, "P6 server")["total"][last])
    embedded = statistics.median(measure(args.trials, None, "P6 sqlite")["total"][last])
    print(
        f"P6: server on PostgreSQL {1000 * served:.1f} ms ({100 * served / 5:.2f}% of a 5 s trial), sqlite "
        f"{1000 * embedded:.1f} ms ({100 * embedded / 5:.2f}%): the server costs {served / embedded:.2f}x"
    )


if __name__ == "__main__":
    main()
