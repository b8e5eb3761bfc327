import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh HPSEARCH_HOME that does not exist yet (so tests can check nothing was written)."""
    path = tmp_path / "home"
    monkeypatch.setenv("HPSEARCH_HOME", str(path))
    return path


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from search.cli import main

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run `hpsearch` as a user would, in a subprocess."""
    exe = Path(sys.executable).parent / "hpsearch"
    return subprocess.run(
        [str(exe), *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn_cli(*args, cwd=None, env=None, stderr=subprocess.STDOUT) -> subprocess.Popen:
    """Start `hpsearch` as a user would, in a session of its own (so that `os.killpg(proc.pid, ...)` reaches its
    Ray too, as a crash or a reboot would); output is text on `proc.stdout`."""
    exe = Path(sys.executable).parent / "hpsearch"
    return subprocess.Popen(
        [str(exe), *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


def sigterm(proc: subprocess.Popen, timeout: float = 120) -> str:
    """Stop a `spawn_cli` process as a user's Ctrl-C or SIGTERM would; its output. Whatever still runs after
    `timeout` (its Ray too) is killed."""
    import signal

    try:
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def write_study(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# Real services for the multi-machine tests (tests/services.py). Session-scoped: started once, on first use.
# A fixture skips only where the component cannot exist here (no PostgreSQL binaries); any other failure to
# start is an error. A test that stops the MLflow server or kills a Ray node restores it before it ends
# (`mlflow_pg.start()`, `ray2.restore()`), in a `finally`.


def _enter_or_skip(stack, context, what):
    from tests.services import ServiceUnavailable

    try:
        return stack.enter_context(context)
    except ServiceUnavailable as exc:
        pytest.skip(f"{what}: {exc}")


@pytest.fixture(scope="session")
def pg():
    """A private PostgreSQL server: `.uri` (a database for the tests), `.create_database(name)` -> uri."""
    import contextlib

    from tests.services import postgres

    with contextlib.ExitStack() as stack:
        yield _enter_or_skip(stack, postgres(), "PostgreSQL")


@pytest.fixture(scope="session")
def mlflow_pg(pg, tmp_path_factory):
    """An MLflow tracking server on a database of `pg`, artifacts in a temp dir: `.uri`, `.stop()`, `.start()`."""
    from tests.services import mlflow_server

    with mlflow_server(pg.create_database("mlflow"), tmp_path_factory.mktemp("mlflow-artifacts")) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_auth(pg, tmp_path_factory):
    """A login-protected MLflow server (`--app-name basic-auth`) on databases of `pg`: `.uri`, `.admin`
    (user, password), `.create_user(name, password)`."""
    from tests.services import mlflow_server

    with mlflow_server(
        pg.create_database("mlflow_team"),
        tmp_path_factory.mktemp("mlflow-team-artifacts"),
        auth_db_uri=pg.create_database("mlflow_users"),
    ) as server:
        yield server


@pytest.fixture(scope="session")
def ray2():
    """A 2-node Ray cluster (head + 1 worker, 1 CPU each) with token auth of its own: `.address`,
    `.dashboard_address`, `.env` (for driver subprocesses), `.node_ids()`, `.kill_node(i)`, `.add_node()`."""
    from tests.services import ray_cluster

    with ray_cluster(num_nodes=2, cpus_per_node=1) as cluster:
        yield cluster
