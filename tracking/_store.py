"""Where a study's records live: the embedded default (sqlite + a file artifact store under one data
directory) or any MLflow tracking URI (`--tracking-uri`, e.g. a server on PostgreSQL)."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.tracking import MlflowClient

# MLflow announces its schema work at INFO ("Creating initial MLflow database tables...", "Updating database
# tables") on a new store: a new user's first `run` would open with another library's lines. Its warnings stay.
for _name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# MLflow draws a progress bar for every artifact it downloads (a spec, a checkpoint): noise on a console.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Against a tracking server MLflow retries a failed request 7 times with doubling waits, each request waiting
# up to 120 s: a dead server held a command for minutes. A few quick retries here; the sweep's own writes
# ride out a longer outage in StudyRecorder, which buffers and retries them.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

# Against a server MLflow prints "View run ... at: URL" to stdout for every run it ends, after fetching the
# run once more: a line per trial in the sweep's console and a request per trial. The UI is one `show` away.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

ANSWER_S = 5.0  # a tracking server or database that does not answer within this is refused up front


class TrackingUnreachable(ConnectionError):
    """The tracking server or database did not answer: one line for the user, nothing written."""


class TrackingUnusable(ValueError):
    """The tracking URI cannot be opened (an unknown scheme, a sqlite file or data directory that cannot be
    created, a store MLflow refuses): one line for the user, nothing written. Not a ConnectionError: waiting
    and retrying would not help."""


HOME_ENV = "HPSEARCH_HOME"
DEFAULT_HOME = "hpsearch-runs"


def data_home() -> Path:
    """The data directory: $HPSEARCH_HOME, else ./hpsearch-runs. Absolute, because Ray moves each trial
    into its own working directory."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()


_WAL_DATABASES: set[str] = set()


def _sqlite_wal(db_path: Path) -> None:
    """Open the embedded store's sqlite file in WAL mode with synchronous=NORMAL: readers in other shells
    (`results`, `show`) never block the sweep's writes, and each write waits for one fsync less.
    Measured by benchmarks/sqlite_wal.py (BENCHMARKS.md): 1.47x less time per trial. After a power loss the
    last writes may be missing, never half-written; `--resume` reconciles such gaps."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not _WAL_DATABASES:
        event.listen(Engine, "connect", _on_connect)
    _WAL_DATABASES.add(str(db_path))


def _on_connect(dbapi_connection, record) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        (_, _, path), *_ = dbapi_connection.execute("PRAGMA database_list").fetchall()
        if path in _WAL_DATABASES:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")


class Store:
    """One MLflow tracking/registry location."""

    def __init__(self, tracking_uri: str | None = None, home: Path | None = None):
        self.home = home or data_home()
        self.embedded = tracking_uri is None
        self.db_path = self.home / "mlflow.db"
        self.tracking_uri = tracking_uri or f"sqlite:///{self.db_path}"
        self._client: MlflowClient | None = None

    def exists(self) -> bool:
        """False when the store's sqlite file (the embedded one, or one a sqlite URI names) was never written:
        nothing to read, and reading must not create it."""
        path = self.db_path if self.embedded else sqlite_file(self.tracking_uri)
        return path is None or path.exists()

    def check(self) -> None:
        """Refuse, writing nothing, a store that cannot be opened for writing: a data directory or sqlite
        folder that cannot be created, a URI scheme MLflow does not know, a server that does not answer.
        What a sweep checks before it records anything."""
        db_path = self.db_path if self.embedded else sqlite_file(self.tracking_uri)
        if self.embedded:
            _check_creatable(self.home, f"data directory {self.home} (${HOME_ENV}, else ./{DEFAULT_HOME})")
        elif db_path is not None:
            _check_creatable(db_path.parent, f"tracking store {self.tracking_uri}: folder {db_path.parent}")
            if db_path.exists() and not db_path.is_file():
                raise TrackingUnusable(f"tracking store {self.tracking_uri}: {db_path} is not a file")
        elif urlparse(self.tracking_uri).scheme in ("", "file"):
            _ = self.client  # MLflow's file store: opening it is the check (MLflow 3 refuses it unless allowed)
        else:
            _known_scheme(self.tracking_uri)
            check_answers(self.tracking_uri)

    @property
    def client(self) -> MlflowClient:
        """The client, opening the store (creating a sqlite file where there is none). Raises TrackingUnusable
        or TrackingUnreachable before MLflow writes anything."""
        if self._client is None:
            db_path = self.db_path if self.embedded else sqlite_file(self.tracking_uri)
            if self.embedded:
                _create(self.home, f"data directory {self.home} (${HOME_ENV}, else ./{DEFAULT_HOME})")
                _sqlite_wal(self.db_path)
            elif db_path is not None:
                _create(db_path.parent, f"tracking store {self.tracking_uri}: folder {db_path.parent}")
            else:
                check_answers(self.tracking_uri)
            self._client = _open(self.tracking_uri)
        return self._client

    def use(self) -> None:
        """Point MLflow's fluent API (needed by log_model) at this store."""
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    def artifact_location(self, study: str) -> str | None:
        """With sqlite, MLflow would put artifacts under ./mlruns of whatever the cwd is (a repository, say):
        they go beside the database instead, in home for the embedded store. A server chooses its own."""
        if self.embedded:
            return (self.home / "artifacts" / study).as_uri()
        db_path = sqlite_file(self.tracking_uri)
        return (db_path.parent / "artifacts" / study).as_uri() if db_path is not None else None

    def experiment_id(self, study: str, create: bool = False) -> str | None:
        exp = self.client.get_experiment_by_name(study)
        if exp is not None:
            return exp.experiment_id
        if not create:
            return None
        return self.client.create_experiment(study, artifact_location=self.artifact_location(study))


def sqlite_file(uri: str) -> Path | None:
    """The database file a `sqlite:///PATH` URI names (relative to the working directory with three slashes,
    absolute with four); None for other URIs and an in-memory sqlite."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path).expanduser().absolute() if path and path != ":memory:" else None


def _create(folder: Path, what: str) -> None:
    """The folder that will hold a store, created where missing; one line when it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise TrackingUnusable(f"{what}: cannot write there: {exc.strerror or exc}") from None


def _check_creatable(folder: Path, what: str) -> None:
    """Whether `folder` exists or can be created, leaving nothing behind: its nearest existing ancestor is a
    folder that takes a new entry (tried for real: permission bits say nothing to root, or of /proc)."""
    import tempfile

    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise TrackingUnusable(f"{what}: cannot write there: {probe} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hpsearch-probe-", dir=probe))
    except OSError as exc:
        raise TrackingUnusable(f"{what}: cannot write there: {probe}: {exc.strerror or exc}") from None


def _known_scheme(uri: str) -> None:
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    try:
        _tracking_store_registry.get_store_builder(uri)
    except UnsupportedModelRegistryStoreURIException as exc:
        raise _unknown_scheme(uri, exc) from None


def _unknown_scheme(uri: str, exc) -> TrackingUnusable:
    schemes = ", ".join(s + ":" for s in exc.supported_uri_schemes if s)
    return TrackingUnusable(
        f"tracking store {redacted(uri)}: not a URI MLflow can open; it takes a path, or one of the schemes {schemes}"
    )


def _open(uri: str) -> MlflowClient:
    """An MlflowClient on `uri`. MLflow opens the tracking store at once, so a URI it cannot use (an unknown
    scheme, a file store it refuses, a file that is not a database) fails here, before anything is written."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except UnsupportedModelRegistryStoreURIException as exc:
        raise _unknown_scheme(uri, exc) from None
    except Exception as exc:  # MlflowException, sqlalchemy's errors, OSError: the store cannot be used as given
        if not isinstance(exc, (MlflowException, OSError)) and not type(exc).__module__.startswith("sqlalchemy"):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise TrackingUnusable(f"tracking store {redacted(uri)}: cannot be opened: {first[:300]}") from None


def check_answers(uri: str, timeout: float = ANSWER_S) -> None:
    """Raise TrackingUnreachable unless the tracking server (http/https: its /health) or the database
    (postgresql, mysql, mssql: a connection) answers within `timeout` seconds. sqlite, file and other
    stores are local and not probed."""
    scheme = urlparse(uri).scheme.split("+")[0]
    try:
        if scheme in ("http", "https"):
            import urllib.error
            import urllib.request

            try:
                urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
            except urllib.error.HTTPError:
                pass  # it answered (a proxy or an older server without /health): reachable
            _check_login(uri, timeout)
        elif scheme in ("postgresql", "mysql", "mssql"):
            import sqlalchemy

            args = {"connect_timeout": int(timeout)} if scheme in ("postgresql", "mysql") else {}
            engine = sqlalchemy.create_engine(uri, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
            try:
                with engine.connect():
                    pass
            finally:
                engine.dispose()
    except TrackingUnusable:
        raise
    except Exception as exc:  # any failure to answer: refused, timed out, unknown host, bad credentials
        reason = str(getattr(exc, "reason", None) or exc).strip().splitlines()
        raise TrackingUnreachable(
            f"tracking store {redacted(uri)} did not answer within {timeout:.0f} s "
            f"({reason[0][:200] if reason else type(exc).__name__}): is the server running, and is the URI right?"
        ) from None


LOGIN_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def _check_login(uri: str, timeout: float) -> None:
    """A server that asks for a login (`mlflow server --app-name basic-auth`) answers /health to anyone, and
    MLflow's client turns a refused login into a long traceback mid-command: one authenticated read first,
    with the credentials MLflow's client would send, says whether they are accepted."""
    import base64
    import urllib.error
    import urllib.request

    from mlflow.utils.credentials import get_default_host_creds

    creds = get_default_host_creds(uri)
    headers = {}
    if creds.username and creds.password:
        pair = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        headers["Authorization"] = f"Basic {pair}"
    elif creds.token:
        headers["Authorization"] = f"Bearer {creds.token}"
    probe = urllib.request.Request(
        uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1", headers=headers
    )
    try:
        urllib.request.urlopen(probe, timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        if exc.code not in (401, 403):
            return  # it answered; an older server or a proxy may not take this read
        raise TrackingUnusable(login_refused(uri, exc.code, bool(headers))) from None


def login_refused(uri: str, code: int, given: bool) -> str:
    """The one line for a tracking server that refused us: which server, and what to set (never a value)."""
    username, password = LOGIN_VARIABLES
    if not given:
        return (
            f"tracking server {redacted(uri)} asks for a login (HTTP {code}) and none is set: set {username} "
            f"and {password} to a user of that server (or put them in ~/.mlflow/credentials)"
        )
    return (
        f"tracking server {redacted(uri)} refused the login (HTTP {code}: wrong user or password, or no "
        f"permission): check {username} and {password} (or ~/.mlflow/credentials)"
    )


def redacted(uri: str) -> str:
    """The URI without a password, for messages and printed lines."""
    import re

    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", uri)
