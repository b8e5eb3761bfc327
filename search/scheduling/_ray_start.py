"""Starting Ray: the options of `ray.init`, and (for `hpsearch run` in its own process) starting it in a
background thread while the driver imports its libraries, plans the study and opens the MLflow store.
Imports nothing heavy at module level: the CLI imports this before anything else."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

# Ray's per-trial CSV/JSON/TensorBoard loggers duplicate what MLflow records; skip their disk writes.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Trials checkpoint only when their best improves; with num_to_keep=1 Ray snapshots its experiment state
# at each such checkpoint and warns about it every time. The snapshot is what a resume needs; the warning isn't.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# A diverged trial's last report has a NaN loss and no validation metric; Ray's strict check would turn
# that one trial's report into an error that ends the whole sweep. ASHA and our searcher skip such a result.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
# Ctrl-C and SIGTERM go through our handler (Signals), which asks Tune to stop by its SIGUSR1 handler.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


class _NoTokenNotice(logging.Filter):
    """Ray 2.60 logs "Token authentication is enabled for this Ray cluster..." at every start and join: a
    notice about Ray's defaults, not about the sweep, so it stays out of the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_NoTokenNotice())


def _local(address: str | None) -> bool:
    """Whether ray.init will start a new local Ray (rather than join a running cluster)."""
    return address is None and not os.environ.get("RAY_ADDRESS")


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def init_ray(
    address: str | None, ship: dict | None = None, joined: str | None = None, origin: str = "--address"
) -> None:
    """A local Ray by default (no dashboard); `address` joins an existing cluster instead. `ship`: a
    runtime_env `working_dir` and `excludes` that carry the user's project to every node of a cluster.
    `joined`: the GCS address of a cluster running on this machine (`running_local_cluster`) to join instead
    of starting one. `origin`: where `address` came from (the flag, a variable or the config file), for errors."""
    import ray

    cwd = os.getcwd()
    pythonpath = os.pathsep.join(p for p in (cwd, os.environ.get("PYTHONPATH", "")) if p)
    options = dict(
        include_dashboard=False,
        logging_level=logging.WARNING,
        # Trial output stays in Ray's session logs; the driver prints one line per finished trial instead.
        log_to_driver=False,
    )
    if joined is not None:  # a local cluster already running (`ray start --head` on this machine)
        try:
            ray.init(address="auto", runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **options)
        except Exception as exc:
            raise connect_error(joined, exc, f"the local cluster ({current_cluster_file()})") from None
        return
    if not _local(address):
        target, origin = (address, origin) if address else (os.environ["RAY_ADDRESS"], "RAY_ADDRESS")
        check_reachable(target, origin)
        # Another machine's workers cannot see this one's directories: the project travels as the job's
        # working_dir (Ray uploads it once and puts it first on each worker's PYTHONPATH).
        runtime_env = dict(ship) if ship else {}
        if "working_dir" in _job_runtime_env():
            # A driver inside a Ray job (`hpsearch submit`): the job shipped the project already, and Ray
            # refuses a second working_dir for the same job.
            runtime_env = {k: v for k, v in runtime_env.items() if k not in ("working_dir", "excludes")}
        try:
            ray.init(address=address, runtime_env=runtime_env, **options)
        except Exception as exc:
            raise connect_error(target, exc, origin) from None
        return
    # Workers import a user's `pkg.module:function` trainable from where hpsearch was started.
    runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
    # Ray starts one idle worker per CPU when the driver connects. Tune's trial actors never run on them (each
    # gets a runtime_env of its own, ray.tune.execution.class_cache, and Ray starts new workers for it), so on
    # a small machine their start only takes CPU from the driver's and the first trials'. The raylet reads
    # this setting from its environment, which it inherits.
    env = {} if "RAY_prestart_worker_first_driver" in os.environ else {"RAY_prestart_worker_first_driver": "0"}
    with _environ(env):
        ray.init(address=None, runtime_env=runtime_env, **options)


def _job_runtime_env() -> dict:
    """The runtime_env of the Ray job this process is the driver of (empty outside a job)."""
    import json

    try:
        return json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}


LOCAL_PROBE_S = 1.0  # a local cluster's GCS that does not accept a connection within this is not joined


def current_cluster_file() -> str:
    """Where `ray start` records the cluster it started on this machine, as Ray's address="auto" reads it:
    $RAY_TMPDIR, else $TMPDIR, else /tmp, then ray/ray_current_cluster."""
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return os.path.join(base or "/tmp", "ray", "ray_current_cluster")


def running_local_cluster() -> str | None:
    """The GCS address of a Ray cluster running on this machine (started with `ray start --head`), or None.
    A file left by a cluster that has gone (a reboot, `kill -9`) is ignored: its GCS port must accept a
    connection within a second, so a stale file never makes a run wait."""
    import socket

    try:
        with open(current_cluster_file()) as f:
            address = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=LOCAL_PROBE_S).close()
    except OSError:
        return None
    return address


ANSWER_S = 5.0  # a cluster address that does not accept a connection within this is refused


def check_reachable(address: str, origin: str = "--address") -> None:
    """Refuse, in one line, a cluster address whose GCS does not answer: ray.init would retry for minutes
    and ignore SIGTERM meanwhile. `auto` and `ray://` (Ray Client) are left to Ray."""
    import socket

    from studies import UserError

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"{origin}: {address!r} is not HOST:PORT (the head's GCS address, e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=ANSWER_S).close()
    except OSError as exc:
        raise UserError(
            f"{origin}: no Ray cluster answers at {address} within {ANSWER_S:.0f} s ({exc.strerror or exc}); "
            "is the head running (`ray start --head`), and is this its GCS address?"
        ) from None


def connect_error(address: str, exc: Exception, origin: str = "--address") -> Exception:
    """ray.init's failure to join a cluster, in one line that says what to set; `origin` names where the address
    came from."""
    from studies import UserError

    text = str(exc)
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    causes, cause = [], exc.__cause__ or exc.__context__
    while cause is not None and len(causes) < 5:  # a wrong token: "Failed to connect", caused by the refusal
        causes.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    text = " ".join([text, *causes])
    if "auth" in text.lower() or "token" in text.lower() or "UNAUTHENTICATED" in text:
        return UserError(
            f"{origin} {address}: the cluster requires token authentication and did not accept this machine's "
            f"token ({first}). Give it the head's token: copy the head's ~/.ray/auth_token here and name the copy "
            "with ray_token_file: in the config file (or RAY_AUTH_TOKEN_PATH, or set RAY_AUTH_TOKEN), with "
            "RAY_AUTH_MODE=token"
        )
    if isinstance(exc, (ConnectionError, TimeoutError)) or "connect" in text.lower():
        return UserError(f"{origin} {address}: cannot join the Ray cluster: {first}")
    return exc


class _NotMainThread(logging.Filter):
    """ray.init warns that it sets no SIGTERM handler outside the main thread: `begin` has set one; and,
    joining the local cluster by address="auto", that other Ray instances run on the machine (other users'
    or tests' clusters started with a temp dir of their own): it joins the one `ray start` recorded."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "SIGTERM handler is not set" not in text and "Found multiple active Ray instances" not in text


class _Held(logging.Filter):
    """Holds Ray's start-up notices (such as "Token authentication is enabled") back until the sweep
    connects: a run that ends on a user's mistake before then prints its one-line error and nothing else."""

    LOGGERS = ("ray._private.authentication.authentication_token_setup",)

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def release(self, show: bool) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)
        for record in self.records if show else ():
            logging.getLogger(record.name).handle(record)
        self.records = []


class _Start:
    def __init__(self, address: str | None, joined: str | None = None):
        self.address = address
        self.joined = joined
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.held = _Held()
        self.thread = threading.Thread(target=self._run, name="hpsearch-ray-start", daemon=True)

    def _run(self) -> None:
        try:
            for name in ("ray._private.worker", "ray._private.services"):
                logging.getLogger(name).addFilter(_NotMainThread())
            init_ray(self.address, joined=self.joined)
        except BaseException as exc:  # re-raised in the main thread by wait()
            self.error = exc
            return
        finally:
            self.ready.set()
        # Ray's processes die with the thread that started them (Linux's parent-death signal is per thread):
        # this one stays, as a daemon, until the process exits.
        threading.Event().wait()


_pending: _Start | None = None
joined: str | None = None  # the local cluster `begin` joined (its GCS address), for the run's first line


def begin(address: str | None) -> None:
    """Start Ray in a background thread (from the main thread, before the driver's other start-up work), or,
    with no address configured and a cluster running on this machine (`ray start --head`), join that one:
    its workers are warm. `wait` joins the thread; `abandon` undoes it when the run ends before its sweep."""
    global _pending, joined
    if _pending is not None or ("ray" in sys.modules and sys.modules["ray"].is_initialized()):
        return
    if not _local(address):
        return  # joining a cluster starts no processes; the run connects once it knows what to ship
    joined = running_local_cluster()
    # What ray.init does in the main thread, which it cannot do from another: exit on SIGTERM (so the
    # driver's `finally` blocks and Ray's atexit shutdown run).
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    _pending = _Start(address, joined)
    _pending.thread.start()


def ready() -> None:
    """Wait for a start begun by `begin` to end, without raising its error (`wait` does, when the sweep
    connects). The run waits here before opening its MLflow records: the workers Ray starts as the driver
    connects then import their modules while the driver writes the records, instead of competing with its
    imports for the CPUs."""
    if _pending is not None:
        _pending.ready.wait()


def wait(show: bool = True) -> bool:
    """Join a start begun by `begin`; re-raise its error. Returns whether there was one. Ray's held start-up
    notices are printed if it started and `show`, dropped otherwise."""
    global _pending
    start, _pending = _pending, None
    if start is None:
        return False
    start.ready.wait()
    start.held.release(show=show and start.error is None)
    if start.error is not None:
        raise start.error
    return True


def abandon() -> None:
    """The run ended before its sweep (a user error, Ctrl-C): wait for Ray's start, then shut it down."""
    try:
        started = wait(show=False)
    except Exception:
        return  # it never started
    if started:
        import ray

        ray.shutdown()
