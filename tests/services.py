"""Real services for the multi-machine tests: a private PostgreSQL, an MLflow tracking server, a Ray cluster.

Plain context managers and classes (no pytest here), for the tests (fixtures `pg`, `mlflow_pg`, `ray2` in
tests/conftest.py) and for benchmark scripts alike:

    with postgres() as pg:                                  # pg.uri, pg.create_database(name) -> uri
        with mlflow_server(pg.create_database("mlflow"), artifacts_dir) as mlf:   # mlf.uri, .stop(), .start()
            with ray_cluster(num_nodes=2, cpus_per_node=1) as ray2:             # ray2.address, .env, ...
                subprocess.run([...driver...], env={**os.environ, **ray2.env})

Each service is private: its own temp dir and free ports on 127.0.0.1; nothing else on the machine (another
PostgreSQL, another Ray, ~/.ray) is read, written or stopped. ServiceUnavailable means the component cannot
exist here (no PostgreSQL binaries, no `unshare`); anything else that goes wrong raises RuntimeError with
the service's log tail.

PostgreSQL: initdb + pg_ctl from /usr/lib/postgresql/*/bin (newest major), trust auth, fsync off; run as the
`postgres` system user (runuser) when we are root, since PostgreSQL refuses root. Starts in about 1-2 s.

MLflow (3.17): `python -m mlflow server --backend-store-uri URI --artifacts-destination DIR --host 127.0.0.1
--port P --workers 1` needs no other flag for clients on 127.0.0.1 (the default --allowed-hosts admits
localhost and private addresses; only another Host header would need --allowed-hosts). Its job execution
(a job runner and huey consumers) is switched off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false) unless
jobs=True. A start (uvicorn, and the schema migration on a new database) takes 10-15 s on 2 busy cores.

Ray (2.60), measured here:

* Nodes are `ray start --block` processes, each in a session of its own (start_new_session=True). Ray's
  worker processes (`ray::IDLE`, trial actors) move to process groups of their own but stay in that
  session, so "kill the node" SIGKILLs the process group AND every process of the session: raylet, object
  store, agents and workers die together, like a lost machine. Ray's ray.cluster_utils.Cluster was not
  used: its nodes are children of the calling process (no separate process group to kill -9 at once) and it
  ties the cluster to the process that made it; `ray start` nodes are what a real cluster runs.
* Each node has a temp dir of its own under a short mkdtemp (/tmp/hprXXXXXXXX/<i>: socket paths stay
  well under 107 bytes). `--temp-dir` is accepted on a non-head node in 2.60; without it a worker node
  uses the head's. A shared one also works (sockets get suffixes: raylet.1, plasma_store.1); separate ones
  are what separate machines have.
* Ray rewrites 127.0.0.1 to the machine's routable address (--node-ip-address 127.0.0.1 is turned into
  it too, e.g. 192.0.2.2), and the GCS listens on all interfaces, so `.address` = 127.0.0.1:PORT works but
  Ray reports (and prints in errors) 192.0.2.2:PORT.
* Token auth. `ray start --head` enables token auth only when it finds a token: RAY_AUTH_TOKEN, then
  RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token (a log line says "Token authentication is enabled for this Ray
  cluster"); with none it runs unauthenticated ("Token authentication is disabled ..."). A local
  `ray.init()` (no address) enables token auth by default and WRITES ~/.ray/auth_token when missing, so
  after any local ray.init() every later plain `ray start --head` on the machine silently uses that token.
  This cluster never depends on it: every node and every driver gets RAY_AUTH_MODE=token and
  RAY_AUTH_TOKEN=<a token of its own> (RAY_AUTH_TOKEN has the highest precedence; ~/.ray is neither read
  nor written). `RayCluster.env` holds those variables; the dashboard/job server wants the header
  `Authorization: Bearer <token>` (without it: HTTP 401 "Unauthorized: Missing authentication token";
  a wrong one: 403 "Forbidden: Invalid authentication token"). JobSubmissionClient picks the token up
  from the environment.
* A driver WITHOUT the token (`ray.init(address="127.0.0.1:PORT")`, RAY_AUTH_* unset, or a wrong
  RAY_AUTH_TOKEN): after ~20 s (20 retries of 1 s, each logging "gcs_client.cc:210: Failed to get cluster
  ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or
  incorrect") it raises builtins.ConnectionError "Failed to connect to Ray cluster at 192.0.2.2:PORT",
  whose __cause__ is a RuntimeError "Failed to connect to GCS. Last connection error: ..." that ends in
  "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing or
  incorrect. Note: RAY_AUTH_MODE is currently 'disabled' (not 'token'). Ensure that the token for the
  cluster is available in a local file (e.g., ~/.ray/auth_token or via RAY_AUTH_TOKEN_PATH) or as the
  `RAY_AUTH_TOKEN` environment variable. ...". With an explicit address, ray.init() does not pick up
  ~/.ray/auth_token by itself (only address=None/"auto" does). With RAY_AUTH_MODE=token and no token
  anywhere it fails at once with ray.exceptions.AuthenticationError "Token authentication is enabled but
  no authentication token was found. Ensure that the token for the cluster is available in a local file
  (e.g., ~/.ray/auth_token or via RAY_AUTH_TOKEN_PATH) or as the `RAY_AUTH_TOKEN` environment variable. ...".
* `ray.init(address="127.0.0.1:<dead port>")` hangs for ~14 min: 20 attempts (RAY_NUM_REDIS_GET_RETRIES)
  of ~41 s each (5 s "Failed to connect to GCS ... within 5 seconds", 5 s for the pubsub, 30 s "Failed
  to get cluster ID from GCS server: TimedOut", 1 s sleep); killed here after 400 s still waiting. No
  argument of ray.init bounds it. RAY_gcs_server_port_wait_time_s=N sets the number of attempts exactly
  (N=1: ConnectionError "Failed to connect to Ray cluster at 192.0.2.2:PORT" after 41 s; N=2: 74 s);
  RAY_gcs_rpc_server_connect_timeout_s shortens only the 5 s parts. Do NOT lower
  RAY_gcs_rpc_server_reconnect_timeout_s for this: the process is then terminated from C++ ("Failed to
  connect to GCS within 2 seconds. GCS may have been killed ... The program will terminate."), no Python
  exception. A caller that wants a quick answer should first try a TCP connect to the GCS port.
* RAY_ADDRESS / address="auto" do NOT find a head started with `ray start --head --temp-dir X` by its temp
  dir: that writes X/ray_current_cluster, while "auto" reads /tmp/ray/ray_current_cluster and otherwise
  falls back to ANY gcs_server process it finds in `ps` (with several Ray instances on the machine it
  picked another one and failed after 42 s, or picked ours, at random). `ray.init(address="auto",
  _temp_dir=X)` finds it (warning "Found multiple active Ray instances ... Connecting to latest cluster at
  ..." when others run). `ray.init()` with neither address nor RAY_ADDRESS starts a NEW local instance.
  RAY_ADDRESS=127.0.0.1:PORT works. Drivers of this cluster should always be given `.address`.
* Failure detection: with fast_failure_detection (default) the nodes run with RAY_health_check_period_ms
  =1000 and RAY_health_check_failure_threshold=3, so GCS reports a kill -9'd node dead ~3-8 s after the
  kill instead of ~16-17 s with Ray's defaults.
* `unshare --mount` works here (root): hide_on_workers=[dir] (or add_node(hide=[dir])) starts worker
  nodes in a private mount namespace with a tmpfs over each dir, so a path the driver writes is empty (and
  private) on those nodes: "storage only the driver's machine sees". can_unshare_mount() tells whether the
  option is available; without it the option raises ServiceUnavailable.
* Start-up on 2 cores: about 20-40 s for head + 1 worker (more when the machine is busy), about 8-15 s per
  added node; stop() takes ~5 s (SIGTERM, 5 s grace, SIGKILL) and leaves no process
  (leftover_processes() is empty; checked with ps). `ray stop` is never used: it stops every Ray on the
  machine.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ServiceUnavailable",
    "free_port",
    "pg_bindir",
    "Postgres",
    "postgres",
    "MlflowServer",
    "mlflow_server",
    "RayCluster",
    "ray_cluster",
    "can_unshare_mount",
]


class ServiceUnavailable(RuntimeError):
    """The component cannot exist on this machine (e.g. no PostgreSQL binaries); tests skip on it."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (the usual bind-to-0 trick; a small race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct free ports (held open together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    return True


def _proc_stat(pid: str) -> tuple[str, int, int] | None:
    """(state, pgid, sid) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[2]), int(fields[3])


def _members(leader: int) -> list[int]:
    """Live (non-zombie) processes in the process group OR the session led by `leader`.

    A child started with start_new_session=True leads both; Ray's workers move to process groups of their own
    but stay in the node's session, so the session is what holds "everything on this machine".
    """
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        pid = stat.split("/")[2]
        info = _proc_stat(pid)
        if info and info[0] not in ("Z", "X") and leader in (info[1], info[2]):
            found.append(int(pid))
    return found


def _signal_members(leader: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, sig)
    for pid in _members(leader):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM everything `proc` leads (it was started with start_new_session=True: its process group and
    session), wait up to `grace` s, then SIGKILL whatever is left, until nothing is."""
    _kill_groups([proc], grace)


def _kill_groups(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """_kill_group for several leaders at once (all get SIGTERM together, then share the grace period)."""

    def left() -> list[subprocess.Popen]:
        for proc in procs:
            proc.poll()
        return [p for p in procs if _members(p.pid)]

    for proc in left():
        _signal_members(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    for _ in range(50):  # a dying parent may still fork: repeat until empty
        remaining = left()
        if not remaining:
            break
        for proc in remaining:
            _signal_members(proc.pid, signal.SIGKILL)
        time.sleep(0.1)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------- PostgreSQL


def pg_bindir() -> Path:
    """The directory holding initdb/pg_ctl/postgres, newest major version first; ServiceUnavailable if none."""
    candidates = []
    for path in glob.glob("/usr/lib/postgresql/*/bin"):
        if all(os.access(os.path.join(path, exe), os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            version = os.path.basename(os.path.dirname(path))
            candidates.append((int(version) if version.isdigit() else 0, path))
    if candidates:
        return Path(max(candidates)[1])
    # Elsewhere (e.g. a distribution that puts them on PATH).
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl") and shutil.which("postgres"):
        return Path(initdb).parent
    raise ServiceUnavailable(
        "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb, none on PATH): "
        "install Debian's `postgresql` package, as .ci/run does"
    )


_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass
class Postgres:
    """A running private PostgreSQL server (trust auth over TCP on 127.0.0.1)."""

    bindir: Path
    root: Path  # the temp dir: data/, sockets/, log
    port: int
    host: str = "127.0.0.1"
    user: str = "postgres"  # the database superuser
    dbname: str = "hpsearch_test"
    run_as: str | None = None  # the OS user the server runs as when we are root
    pid: int | None = None

    @property
    def uri(self) -> str:
        """SQLAlchemy URL of the tests' database."""
        return self.uri_for(self.dbname)

    def uri_for(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name` (letters, digits, underscores); returns its SQLAlchemy URL."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r}: use letters, digits and underscores")
        self._client("createdb", name)
        return self.uri_for(name)

    def drop_database(self, name: str) -> None:
        self._client("dropdb", "--if-exists", "--force", name)

    def _client(self, exe: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / exe), "-h", self.host, "-p", str(self.port), "-U", self.user, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )
        if result.returncode:
            raise RuntimeError(f"{exe} {' '.join(args)} failed: {result.stderr.strip()}")


def _as_server_user(cmd: list[str], run_as: str | None) -> list[str]:
    return ["runuser", "-u", run_as, "--", *cmd] if run_as else cmd


@contextlib.contextmanager
def postgres(dbname: str = "hpsearch_test", start_timeout: float = 60) -> Iterator[Postgres]:
    """Start a PRIVATE PostgreSQL (initdb in a temp dir, a free port on 127.0.0.1), stop and delete it after.

    Runs as the `postgres` system user when we are root (PostgreSQL refuses root), else as ourselves.
    Never touches another PostgreSQL on the machine. ServiceUnavailable when the binaries are missing.
    """
    bindir = pg_bindir()
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceUnavailable(
                "running as root and there is no `postgres` system user to run PostgreSQL as"
            ) from None
        if not shutil.which("runuser"):
            raise ServiceUnavailable("running as root and `runuser` is missing (needed to run PostgreSQL as postgres)")
        run_as = "postgres"
    root = Path(tempfile.mkdtemp(prefix="hppg-"))
    server = None
    try:
        (root / "sockets").mkdir()
        if run_as:
            entry = pwd.getpwnam(run_as)
            for path in (root, root / "sockets"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        run = dict(cwd=root, capture_output=True, text=True)
        result = subprocess.run(
            _as_server_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(root / "data"),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                run_as,
            ),
            timeout=120,
            **run,
        )
        if result.returncode:
            raise RuntimeError(f"initdb failed ({result.returncode}): {result.stderr.strip()}")
        conf = root / "data" / "postgresql.conf"
        base_conf = conf.read_text()
        for attempt in range(3):
            port = free_port()
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(port),
                "unix_socket_directories": f"'{root / 'sockets'}'",
                "max_connections": "200",
                "fsync": "off",  # a throwaway test database
                "synchronous_commit": "off",
                "full_page_writes": "off",
            }
            conf.write_text(base_conf + "\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
            result = subprocess.run(
                _as_server_user(
                    [
                        str(bindir / "pg_ctl"),
                        "start",
                        "-D",
                        str(root / "data"),
                        "-l",
                        str(root / "postgres.log"),
                        "-w",
                        "-t",
                        str(int(start_timeout)),
                    ],
                    run_as,
                ),
                timeout=start_timeout + 30,
                **run,
            )
            if result.returncode == 0:
                break
            if "could not bind" not in _tail(root / "postgres.log") or attempt == 2:
                raise RuntimeError(
                    f"pg_ctl start failed ({result.returncode}): {result.stderr.strip()}\n"
                    f"--- postgres.log ---\n{_tail(root / 'postgres.log')}"
                )
        pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
        server = Postgres(bindir=bindir, root=root, port=port, dbname=dbname, run_as=run_as, pid=pid)
        server.create_database(dbname)
        yield server
    finally:
        if server is not None or (root / "data" / "postmaster.pid").exists():
            _stop_postgres(bindir, root, run_as, server.pid if server else None)
        shutil.rmtree(root, ignore_errors=True)


def _stop_postgres(bindir: Path, root: Path, run_as: str | None, pid: int | None) -> None:
    if pid is None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            _as_server_user(
                [str(bindir / "pg_ctl"), "stop", "-D", str(root / "data"), "-m", "fast", "-w", "-t", "30"], run_as
            ),
            cwd=root,
            capture_output=True,
            timeout=40,
        )
    if pid is not None and _alive(pid):  # our own postmaster, by its pid only
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown; the postmaster then ends its children
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------- MLflow


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class MlflowServer:
    """`python -m mlflow server` as a subprocess in its own process group; stop() and start() keep the port."""

    def __init__(
        self,
        backend_uri: str,
        artifacts_dir: str | os.PathLike,
        port: int | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 90,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        jobs: bool = False,
        auth_db_uri: str | None = None,
    ):
        self.backend_uri = backend_uri
        self.artifacts_dir = Path(artifacts_dir)
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout = start_timeout
        self.python = python
        # MLflow's job execution (a job runner and huey consumers: 3 more processes) is off unless asked for.
        self.extra_env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if jobs else "false", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self._log_dir = Path(tempfile.mkdtemp(prefix="hpmlf-"))
        self._starts = 0
        self.admin: tuple[str, str] | None = None
        if auth_db_uri is not None:  # `--app-name basic-auth`: every request needs a login
            self._with_login(auth_db_uri)

    def _with_login(self, auth_db_uri: str) -> None:
        """The login-protected server a team runs: MLflow's basic-auth app, its users in `auth_db_uri`, an
        admin whose password comes from MLFLOW_AUTH_ADMIN_PASSWORD (MLflow ships none)."""
        self.admin = ("admin", secrets.token_urlsafe(16))
        ini = self._log_dir / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {auth_db_uri}\nadmin_username = {self.admin[0]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        self.extra_env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(ini),
            MLFLOW_AUTH_ADMIN_PASSWORD=self.admin[1],
            MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),  # CSRF protection of its login forms
        )

    def create_user(self, username: str, password: str) -> None:
        """A user of the login-protected server (the admin creates it), as a team's admin would."""
        import base64

        pair = base64.b64encode(f"{self.admin[0]}:{self.admin[1]}".encode()).decode()
        request = urllib.request.Request(
            f"{self.uri}/api/2.0/mlflow/users/create",
            data=json.dumps({"username": username, "password": password}).encode(),
            headers={"Authorization": f"Basic {pair}", "Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=30).close()

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_file(self) -> Path:
        """The server's stdout and stderr, of its latest start."""
        return self._log_dir / f"server-{self._starts}.log"

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts_dir),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
            *(["--app-name", "basic-auth"] if self.admin else []),
        ]

    def start(self) -> MlflowServer:
        """Start the server (on the same port and backend as before) and wait until GET /health answers."""
        if self.running:
            return self
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self._starts += 1
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the server uses its own flags only
            env.pop(name, None)
        deadline = time.monotonic() + self.start_timeout
        while True:  # after a stop the old socket may linger a moment: wait for the port
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.host, self.port))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"MLflow server: port {self.port} stays busy") from None
                    time.sleep(0.2)
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        while not _http_ok(f"{self.uri}/health"):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(
                    f"MLflow server exited with {code} before answering /health:\n{_tail(self.log_file)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"MLflow server did not answer {self.uri}/health within {self.start_timeout:.0f} s:\n"
                    f"{_tail(self.log_file)}"
                )
            time.sleep(0.25)
        return self

    def stop(self) -> None:
        """Kill the server's process group (SIGTERM, then SIGKILL)."""
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._log_dir, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: str | os.PathLike, **kwargs) -> Iterator[MlflowServer]:
    """An MLflow tracking server on `backend_uri` (e.g. Postgres.uri), artifacts served from `artifacts_dir`."""
    server = MlflowServer(backend_uri, artifacts_dir, **kwargs)
    try:
        server.start()
        yield server
    finally:
        server.close()


# ------------------------------------------------------------------------------------------------------ Ray

_NODES_SCRIPT = r"""
import json, os, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
want, deadline = json.loads(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    nodes = ray.nodes()
    alive = {r for n in nodes if n["Alive"] for r in n["Resources"]}
    if all(w in alive for w in want) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print("NODES=" + json.dumps([
    {"NodeID": n["NodeID"], "Alive": n["Alive"], "Resources": n["Resources"], "Labels": n.get("Labels", {})}
    for n in nodes
]))
"""


@dataclass
class RayNode:
    """One `ray start --block` process group: a simulated machine."""

    index: int  # 0: the head
    temp_dir: Path
    resource: str  # a custom resource only this node has (quantity 1000), e.g. "hp_node_1"
    proc: subprocess.Popen
    log_file: Path
    hidden: tuple[str, ...] = ()  # directories this node cannot see (a tmpfs over each)
    node_id: str | None = None
    killed: bool = False  # by kill_node()
    replaced: bool = False  # restore() started a fresh node in its place

    @property
    def is_head(self) -> bool:
        return self.index == 0

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class RayCluster:
    """A Ray cluster of separate `ray start` nodes on this machine (one session each), with a token of its own.

    Node 0 is the head (GCS, dashboard and job server); nodes 1.. are workers. Every node i has the custom
    resource `hp_node_<i>` (1000 units) and the label `hp_node=<i>`; workers also have `hp_worker` (1000) and
    the head `hp_head` (1000). Ask for 0.001 of one to place a task on that node.

    address: the GCS address 127.0.0.1:PORT. dashboard_address: http://127.0.0.1:PORT (the job server).
    env: what a driver subprocess needs besides the address (RAY_AUTH_MODE, RAY_AUTH_TOKEN); RAY_ADDRESS is
    not in it. nodes: RayNode per started node (node_id, resource, temp_dir, log_file, killed).
    hide_on_workers: directories that worker nodes see as an empty private tmpfs (see can_unshare_mount()).
    """

    def __init__(
        self,
        num_nodes: int = 2,
        cpus_per_node: int = 1,
        object_store_mb: int = 300,
        hide_on_workers: tuple[str | os.PathLike, ...] = (),
        node_env: dict[str, str] | None = None,
        fast_failure_detection: bool = True,
        python: str = sys.executable,
        start_timeout: float = 120,
    ):
        if num_nodes < 1:
            raise ValueError("num_nodes must be at least 1 (the head)")
        self.cpus_per_node = cpus_per_node
        self.object_store_mb = object_store_mb
        self.hide_on_workers = tuple(str(Path(p).resolve()) for p in hide_on_workers)
        self.python = python
        ray_script = Path(python).parent / "ray"  # the `ray` CLI of that environment, else its module
        self.ray_cmd = [str(ray_script)] if ray_script.exists() else [python, "-m", "ray.scripts.scripts"]
        self.start_timeout = start_timeout
        self.token = secrets.token_hex(32)
        self._check_hidden(self.hide_on_workers)
        self.root = Path(tempfile.mkdtemp(prefix="hpr", dir="/tmp"))  # short: Ray's socket paths < 107 bytes
        self.env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,  # takes precedence over ~/.ray/auth_token, which is never read or written
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        # Job entrypoints (`python ...`, `hpsearch ...`) resolve to this Python's environment, as on a machine
        # where it is activated.
        self.node_env = {**self.env, "PATH": os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")])}
        if fast_failure_detection:  # GCS declares a kill -9'd node dead in ~3-5 s instead of ~15-20 s
            self.node_env.update(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
        self.node_env.update(node_env or {})
        self.nodes: list[RayNode] = []
        self.address = ""
        self.dashboard_address = ""
        self._num_nodes = num_nodes

    # -- lifecycle

    def start(self) -> RayCluster:
        gcs_port, dash_port = _free_ports(2)
        self.address = f"127.0.0.1:{gcs_port}"
        self.dashboard_address = f"http://127.0.0.1:{dash_port}"
        self._spawn(
            0,
            [
                "--head",
                "--port",
                str(gcs_port),
                "--include-dashboard=true",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(dash_port),
                "--ray-client-server-port",
                str(free_port()),
            ],
        )
        self._wait_for_gcs(time.monotonic() + self.start_timeout)  # a worker started earlier waits ~40 s per retry
        for _ in range(1, self._num_nodes):
            self._spawn(len(self.nodes), ["--address", self.address])
        self.wait_for_nodes()
        self._wait_for_dashboard(time.monotonic() + self.start_timeout)
        return self

    def _wait_for_gcs(self, deadline: float) -> None:
        port = int(self.address.rsplit(":", 1)[1])
        while True:
            if not self.head.alive:
                raise RuntimeError(f"Ray head exited ({self.head.proc.returncode}):\n{_tail(self.head.log_file)}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Ray head did not open {self.address}:\n{_tail(self.head.log_file)}") from None
                time.sleep(0.2)

    def _wait_for_dashboard(self, deadline: float) -> None:
        """Until the head's dashboard (the job server) answers, with the cluster's token."""
        request = urllib.request.Request(
            f"{self.dashboard_address}/api/version", headers={"Authorization": f"Bearer {self.token}"}
        )
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Ray dashboard {self.dashboard_address} did not answer:\n{_tail(self.head.log_file)}"
                )
            time.sleep(0.5)

    def add_node(self, hide: tuple[str | os.PathLike, ...] | None = None, env: dict[str, str] | None = None) -> RayNode:
        """Start one more worker node (a new machine) and wait until the cluster sees it. `env`: that machine's
        own environment variables (e.g. a PYTHONPATH with other packages first), over the cluster's."""
        node = self._spawn(len(self.nodes), ["--address", self.address], hide=hide, env=env)
        self.wait_for_nodes()
        return node

    def restore(self) -> list[RayNode]:
        """Start a fresh worker node for each worker that was killed (the head cannot be replaced)."""
        if not self.head.alive:
            raise RuntimeError("the Ray head is gone; start a new cluster")
        dead = [n for n in self.workers if not n.alive and not n.replaced]
        fresh = []
        for node in dead:
            node.replaced = True
            fresh.append(self._spawn(len(self.nodes), ["--address", self.address], hide=node.hidden))
        if fresh:
            self.wait_for_nodes()
        return fresh

    def kill_node(self, i: int, wait_dead: bool = True, timeout: float = 90) -> None:
        """kill -9 node i's whole process group (its raylet, object store, agents and workers): a machine loss.

        With wait_dead, return once GCS reports the node dead (unless it is the head)."""
        node = self.nodes[i]
        node.killed = True
        for _ in range(50):  # everything at once, as a machine loss; repeat in case one forked meanwhile
            _signal_members(node.proc.pid, signal.SIGKILL)
            time.sleep(0.05)
            if not _members(node.proc.pid):
                break
        node.proc.wait(timeout=30)
        if wait_dead and not node.is_head and node.node_id:
            deadline = time.monotonic() + timeout
            while True:
                info = {n["NodeID"]: n["Alive"] for n in self.nodes_info()}
                if not info.get(node.node_id, False):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Ray still reports node {i} ({node.node_id}) alive {timeout:.0f} s after kill -9"
                    )
                time.sleep(1)

    def stop(self) -> None:
        """SIGTERM every node's process group (workers first), wait, then SIGKILL. Never `ray stop`."""
        _kill_groups([n.proc for n in reversed(self.nodes)], grace=3)
        shutil.rmtree(self.root, ignore_errors=True)

    def leftover_processes(self) -> list[str]:
        """`pid command` of every live process of the cluster: in a node's process group or session, or naming
        the cluster's temp dir or GCS port on its command line. Empty after stop()."""
        port = self.address.rsplit(":", 1)[-1] if self.address else None
        members = {pid for n in self.nodes for pid in _members(n.proc.pid)}
        left = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            pid = stat.split("/")[2]
            info = _proc_stat(pid)
            if not info or info[0] in ("Z", "X"):
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if (
                int(pid) in members
                or str(self.root) in cmdline
                or (port and re.search(rf"[:=]{port}\b", cmdline) and "ray" in cmdline)
            ):
                left.append(f"{pid} {cmdline.strip()[:200]}")
        return left

    # -- queries (from short-lived driver subprocesses, never the calling process)

    def driver(
        self, code: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run `python -c code args...` as a driver of this cluster (its env carries the token)."""
        result = subprocess.run(
            [self.python, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env, **(env or {})},
            cwd=self.root,
        )
        if check and result.returncode:
            raise RuntimeError(f"Ray driver failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def nodes_info(self, wait_for: list[str] | None = None, timeout: float = 0) -> list[dict]:
        """ray.nodes() (NodeID, Alive, Resources, Labels), from a driver subprocess; with wait_for (resource
        names), first waiting up to `timeout` s until nodes holding them are all alive."""
        result = self.driver(
            _NODES_SCRIPT, self.address, json.dumps(wait_for or []), str(timeout), timeout=timeout + 120
        )
        line = [ln for ln in result.stdout.splitlines() if ln.startswith("NODES=")]
        if not line:
            raise RuntimeError(f"no node list from the driver:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return json.loads(line[-1][len("NODES=") :])

    def wait_for_nodes(self, timeout: float | None = None) -> None:
        """Wait until every node started and not killed is alive in ray.nodes(); record their node ids."""
        timeout = self.start_timeout if timeout is None else timeout
        want = [n for n in self.nodes if not n.killed]
        deadline = time.monotonic() + timeout
        self._wait_for_gcs(deadline)
        dead = [n for n in want if not n.alive]
        if dead:
            node = dead[0]
            raise RuntimeError(f"Ray node {node.index} exited ({node.proc.returncode}):\n{_tail(node.log_file)}")
        info = self.nodes_info([n.resource for n in want], timeout=max(1.0, deadline - time.monotonic()))
        by_resource = {r: n for n in info if n["Alive"] for r in n["Resources"]}
        missing = [n for n in want if n.resource not in by_resource]
        if missing:
            logs = "\n".join(f"--- node {n.index} ---\n{_tail(n.log_file, 2000)}" for n in missing)
            raise RuntimeError(f"Ray nodes {[n.index for n in missing]} not alive after {timeout:.0f} s:\n{logs}")
        for node in want:
            node.node_id = by_resource[node.resource]["NodeID"]

    def node_ids(self) -> list[str]:
        """Node ids of the cluster's nodes that Ray reports alive, in node order (head first)."""
        alive = {n["NodeID"] for n in self.nodes_info() if n["Alive"]}
        return [n.node_id for n in self.nodes if n.node_id in alive]

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    @property
    def workers(self) -> list[RayNode]:
        return self.nodes[1:]

    # -- internals

    @staticmethod
    def _check_hidden(hidden: tuple[str, ...]) -> None:
        if not hidden:
            return
        if not can_unshare_mount():
            raise ServiceUnavailable("hiding a directory from a node needs `unshare --mount` (root here)")
        for path in hidden:
            if Path("/tmp").resolve().is_relative_to(path) or Path(path) == Path("/"):
                raise ValueError(f"cannot hide {path}: the nodes' temp dirs are under /tmp")

    def _spawn(
        self,
        index: int,
        args: list[str],
        hide: tuple[str | os.PathLike, ...] | None = None,
        env: dict[str, str] | None = None,
    ) -> RayNode:
        head = index == 0
        hidden = () if head else tuple(str(Path(p).resolve()) for p in (self.hide_on_workers if hide is None else hide))
        self._check_hidden(hidden)
        temp_dir = self.root / str(index)  # each node its own (as on separate machines)
        temp_dir.mkdir()
        resource = f"hp_node_{index}"
        resources = {resource: 1000, ("hp_head" if head else "hp_worker"): 1000}
        node_manager, object_manager, agent_http, agent_grpc, runtime_env, metrics = _free_ports(6)
        cmd = [
            *self.ray_cmd,
            "start",
            "--block",
            *args,
            "--temp-dir",
            str(temp_dir),
            "--num-cpus",
            str(self.cpus_per_node),
            "--num-gpus",
            "0",
            "--resources",
            json.dumps(resources),
            "--labels",
            f"hp_node={index},hp_role={'head' if head else 'worker'}",
            "--object-store-memory",
            str(self.object_store_mb * 1024 * 1024),
            "--node-manager-port",
            str(node_manager),
            "--object-manager-port",
            str(object_manager),
            "--dashboard-agent-listen-port",
            str(agent_http),
            "--dashboard-agent-grpc-port",
            str(agent_grpc),
            "--runtime-env-agent-port",
            str(runtime_env),
            "--metrics-export-port",
            str(metrics),
            "--disable-usage-stats",
            "--log-style",
            "record",
            "--log-color",
            "false",
        ]
        if hidden:
            for path in hidden:
                Path(path).mkdir(parents=True, exist_ok=True)
            mounts = " && ".join(f"mount -t tmpfs -o size=1g hpsearch-hidden {_shquote(p)}" for p in hidden)
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh", *cmd]
        log_file = self.root / f"node{index}.log"
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **self.node_env, **(env or {})},
                start_new_session=True,
            )
        node = RayNode(index, temp_dir, resource, proc, log_file, hidden)
        self.nodes.append(node)
        return node


def _shquote(text: str) -> str:
    return shlex.quote(text)


_UNSHARE_OK: bool | None = None


def can_unshare_mount() -> bool:
    """Whether `unshare --mount` can mount a tmpfs here (root, or a kernel that lets us)."""
    global _UNSHARE_OK
    if _UNSHARE_OK is None:
        if not shutil.which("unshare"):
            _UNSHARE_OK = False
        else:
            probe = tempfile.mkdtemp(prefix="hpu")
            try:
                result = subprocess.run(
                    [
                        "unshare",
                        "--mount",
                        "--propagation",
                        "private",
                        "sh",
                        "-c",
                        f"mount -t tmpfs hpsearch-probe {_shquote(probe)} && touch {_shquote(probe)}/x",
                    ],
                    capture_output=True,
                    timeout=30,
                )
                _UNSHARE_OK = result.returncode == 0 and not os.path.exists(os.path.join(probe, "x"))
            except (OSError, subprocess.TimeoutExpired):
                _UNSHARE_OK = False
            finally:
                shutil.rmtree(probe, ignore_errors=True)
    return _UNSHARE_OK


@contextlib.contextmanager
def ray_cluster(num_nodes: int = 2, cpus_per_node: int = 1, **kwargs) -> Iterator[RayCluster]:
    """Start a RayCluster (see its docstring), yield it, and kill every node's process group after."""
    cluster = RayCluster(num_nodes, cpus_per_node, **kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
