import logging
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


def run_cli(*args, cwd=None, env=None, timeout=600, own_ray=False):
    """Run `hpsearch` as a user would, in a subprocess. A `run` joins the session's Ray head (`ray_head`), as
    it joins a head a user started on their machine; `own_ray=True`: it starts a Ray of its own instead."""
    exe = Path(sys.executable).parent / "hpsearch"
    return subprocess.run(
        [str(exe), *map(str, args)],
        cwd=cwd,
        env=_environment(env, own_ray),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn_cli(*args, cwd=None, env=None, stderr=subprocess.STDOUT, join=False) -> subprocess.Popen:
    """Start `hpsearch` as a user would, in a session of its own (so that `os.killpg(proc.pid, ...)` reaches its
    Ray too, as a crash or a reboot would); output is text on `proc.stdout`. It starts a Ray of its own unless
    `join=True` (it then joins the session's Ray head, where a kill of its process group ends the driver only)."""
    exe = Path(sys.executable).parent / "hpsearch"
    return subprocess.Popen(
        [str(exe), *map(str, args)],
        cwd=cwd,
        env=_environment(env, own_ray=not join),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


def _environment(env: dict | None, own_ray: bool) -> dict:
    """The test process's environment with `env` over it; without what joins the session's Ray head if
    `own_ray` (RAY_TMPDIR: the head's address file is found through it)."""
    base = dict(os.environ)
    if own_ray and _head is not None:
        for name, value in _head.env.items():
            if base.get(name) == value:
                del base[name]
    return {**base, **(env or {})}


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


# One Ray head for the whole session, which every sweep joins instead of starting a Ray of its own (11-21 s
# each on 2 cores): `hpsearch run` joins a head started on its machine, and so does `ray.init()` with no
# address, in this process (api.run, a promotion) and in a subprocess. Tests that must start their own Ray (a
# kill of a sweep's process group that must reach its Ray; the start-up itself) say so: `spawn_cli` (its
# default), `run_cli(own_ray=True)`. HPSEARCH_TESTS_OWN_RAY=1 runs the session without it, every sweep
# starting its own Ray, as a user without `ray start` runs.
_head = None


class _OneOfSeveral(logging.Filter):
    """Ray warns, as this process joins the head, that other Ray instances run on the machine (the cluster
    fixtures', other users'); it joins the one `ray start` recorded, the head. `hpsearch run` drops it too."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Found multiple active Ray instances" not in record.getMessage()


logging.getLogger("ray._private.services").addFilter(_OneOfSeveral())


_saved: dict[str, str | None] = {}


def pytest_configure(config):
    """The head's variables go into this process's environment before the test modules are collected: Ray
    reads RAY_AUTH_MODE once, when a module imports it, and a driver without it cannot join the head."""
    global _head
    if os.environ.get("HPSEARCH_TESTS_OWN_RAY"):
        return
    from tests.services import LocalHead

    _head = LocalHead()
    _saved.update({name: os.environ.get(name) for name in _head.env})
    os.environ.update(_head.env)


def pytest_unconfigure(config):
    global _head
    if _head is not None:
        _head.stop()  # also when no test ran: its temp dir goes
        _head = None
    for name, value in _saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session", autouse=True)
def ray_head():
    """The session's Ray head (tests/services.py LocalHead), started before the first test; its variables
    (`.env`) are in this process's environment and so in every subprocess's. Stopped, by its own process
    group, when the session ends."""
    if _head is None:
        yield None
        return
    _head.start()
    try:
        yield _head
    finally:
        _leave()
        _head.stop()


def _leave() -> None:
    """This process's connection to the head ends before the head does: a driver whose GCS goes away is
    terminated by Ray's C++ core, and pytest with it."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


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
