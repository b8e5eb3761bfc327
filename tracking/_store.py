"""Where a study's records live: the embedded default (sqlite + a file artifact store under one data
directory) or any MLflow tracking URI (`--tracking-uri`, e.g. a server on PostgreSQL)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

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
        """False when the embedded store was never written: nothing to read, and reading must not create it."""
        return not self.embedded or self.db_path.exists()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            if self.embedded:
                self.home.mkdir(parents=True, exist_ok=True)
                _sqlite_wal(self.db_path)
            else:
                check_answers(self.tracking_uri)
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def use(self) -> None:
        """Point MLflow's fluent API (needed by log_model) at this store."""
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    def artifact_location(self, study: str) -> str | None:
        # With sqlite, MLflow would put artifacts under ./mlruns of whatever the cwd is; pin them in home.
        return (self.home / "artifacts" / study).as_uri() if self.embedded else None

    def experiment_id(self, study: str, create: bool = False) -> str | None:
        exp = self.client.get_experiment_by_name(study)
        if exp is not None:
            return exp.experiment_id
        if not create:
            return None
        return self.client.create_experiment(study, artifact_location=self.artifact_location(study))


def check_answers(uri: str, timeout: float = ANSWER_S) -> None:
    """Raise TrackingUnreachable unless the tracking server (http/https: its /health) or the database
    (postgresql, mysql, mssql: a connection) answers within `timeout` seconds. sqlite, file and other
    stores are local and not probed."""
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme.split("+")[0]
    try:
        if scheme in ("http", "https"):
            import urllib.error
            import urllib.request

            try:
                urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
            except urllib.error.HTTPError:
                pass  # it answered (a proxy or an older server without /health): reachable
        elif scheme in ("postgresql", "mysql", "mssql"):
            import sqlalchemy

            args = {"connect_timeout": int(timeout)} if scheme in ("postgresql", "mysql") else {}
            engine = sqlalchemy.create_engine(uri, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
            try:
                with engine.connect():
                    pass
            finally:
                engine.dispose()
    except Exception as exc:  # any failure to answer: refused, timed out, unknown host, bad credentials
        reason = str(getattr(exc, "reason", None) or exc).strip().splitlines()
        raise TrackingUnreachable(
            f"tracking store {_redacted(uri)} did not answer within {timeout:.0f} s "
            f"({reason[0][:200] if reason else type(exc).__name__}): is the server running, and is the URI right?"
        ) from None


def _redacted(uri: str) -> str:
    """The URI without a password, for messages."""
    import re

    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", uri)
