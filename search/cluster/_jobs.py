"""Submit and leave: a sweep's driver sent to the cluster as a Ray Job (Ray's Job Submission API against the
head's job server), and what any machine reads of it afterwards.

The job's entrypoint is `hpsearch run STUDY ...` with the user's flags; the project folder ships as the
job's runtime_env `working_dir`, and the locations go in its `env_vars`, so the driver on the head writes to
the same tracking store and shared storage as every other command. The submission is recorded in the study's
state folder (`control/STUDY.job`, beside the lock and stop requests), so `show`, `logs` and `stop` find the
job from any machine that sees the storage.

The job server is the first of: `--job-server`, RAY_API_SERVER_ADDRESS (Ray's own variable, as `ray job`
reads it), http://HEAD:8265 for a Ray address HEAD:PORT, and http://127.0.0.1:8265 (a head on this machine).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from studies import UserError

from ._studylock import control_dir

SERVER_ENV = "RAY_API_SERVER_ADDRESS"
DASHBOARD_PORT = 8265  # Ray's default dashboard (and job server) port
ANSWER_S = 5.0
ACTIVE = ("PENDING", "RUNNING")
AGENT_WAIT_S = 60.0  # how long a head that has just started may take to accept jobs
ERROR_LINES = 12  # the last lines of a failed job's output that `show` prints
NO_HPSEARCH = (
    "hpsearch: error: the head has no `hpsearch` on the PATH its `ray start` ran with: start the head from the "
    "activated environment (`hpsearch doctor` checks it), then submit again"
)
LOGIN_ENV = "HPSEARCH_LOGIN_FILE"  # the job's driver reads the submitter's tracking login from this file


# ---- where the job server is


def job_server(flag: str | None, address: str | None, address_origin: str = "the Ray address") -> tuple[str, str]:
    """(URL of the job server, where it came from)."""
    if flag:
        return _url(flag), "--job-server"
    if os.environ.get(SERVER_ENV):
        return _url(os.environ[SERVER_ENV]), SERVER_ENV
    if address and address != "auto":
        host = urlparse(address).hostname if "://" in address else address.rpartition(":")[0]
        if host:
            return f"http://{host}:{DASHBOARD_PORT}", f"Ray's default port on the head of {address_origin}"
    return f"http://127.0.0.1:{DASHBOARD_PORT}", "default: a head on this machine"


def _url(text: str) -> str:
    text = text.strip().rstrip("/")
    return text if "://" in text else f"http://{text}"


def is_local(url: str) -> bool:
    """Whether the job server (so the head, and the job's driver) is this machine."""
    host = urlparse(url).hostname or ""
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    try:
        mine = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        mine = set()
    return any(ipaddress.ip_address(a.split("%")[0]).is_loopback or a in mine for a in addresses)


def _headers() -> dict | None:
    """The cluster's token as the job server wants it, where this machine has one (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token): Ray's own client sends it only under RAY_AUTH_MODE=token."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), "~/.ray/auth_token"):
        if token or not path:
            continue
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError:
            pass
    return {"Authorization": f"Bearer {token}"} if token else None


def connect(url: str, origin: str = "the recorded job server"):
    """A JobSubmissionClient for the job server at `url`; UserError, in one line, when it does not answer."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"job server: {url!r} ({origin}) is not an http://HOST:PORT address (the head's dashboard)")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=ANSWER_S).close()
    except OSError as exc:
        raise UserError(
            f"job server: nothing answers at {url} ({origin}) within {ANSWER_S:.0f} s ({exc.strerror or exc}); "
            "is the head running (`ray start --head` starts its dashboard, which needs ray[default]: the "
            f"`cluster` extra)? Name it with --job-server or {SERVER_ENV}"
        ) from None
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # pragma: no cover - ray[default] missing
        raise UserError(
            f"submit needs Ray's job client (ray[default]; pip install 'hpsearch[cluster]'): {exc}"
        ) from None
    try:
        return JobSubmissionClient(url, headers=_headers())
    except Exception as exc:
        raise _server_error(url, origin, exc) from None


def _server_error(url: str, origin: str, exc: Exception) -> UserError:
    text = str(exc)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)[:300]
    if "401" in text or "403" in text or "uthenticat" in text:
        return UserError(
            f"job server {url} ({origin}) refused us: {first}. The cluster uses token authentication: "
            "give this machine the head's token (its ~/.ray/auth_token, or RAY_AUTH_TOKEN)"
        )
    return UserError(f"job server {url} ({origin}): {first}")


# ---- the record of the latest submission, in the study's state folder


def record_path(root: Path, study: str) -> Path:
    return control_dir(root) / f"{study}.job"


def write_record(root: Path, study: str, record: dict) -> Path:
    path = record_path(root, study)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}")
    staged.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(staged, path)  # atomic: a reader sees the previous submission or this one
    return path


def read_record(root: Path, study: str) -> dict | None:
    try:
        return json.loads(record_path(root, study).read_text())
    except (OSError, ValueError):
        return None


def job_state(record: dict, logs: bool = True) -> dict:
    """The recorded job as the job server sees it now: state (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED, or
    `unknown` when the server does not answer), its message, and for a failed job its last output lines."""
    state = {
        **{k: record.get(k) for k in ("job_id", "job_server", "submitted", "host")},
        "state": "unknown",
        "message": "",
        "error_lines": [],
    }
    try:
        client = connect(record["job_server"])
        info = client.get_job_info(record["job_id"])
    except UserError as exc:
        state["message"] = str(exc)
        return state
    except Exception as exc:
        state["message"] = next(iter(str(exc).strip().splitlines()), type(exc).__name__)[:300]
        return state
    state["state"] = str(getattr(info.status, "value", info.status))
    state["message"] = (info.message or "").strip()
    if state["state"] == "FAILED" and logs:
        try:
            lines = [ln for ln in client.get_job_logs(record["job_id"]).splitlines() if ln.strip()]
        except Exception:
            lines = []
        state["error_lines"] = lines[-ERROR_LINES:]
    return state


def active_job_error(study: str, record: dict, state: dict) -> UserError:
    return UserError(
        f"study {study!r} is already running as Ray job {record['job_id']} ({state['state']}, submitted "
        f"{record.get('submitted')} to {record['job_server']}): follow it with `hpsearch show {study}`, end it with "
        f"`hpsearch stop {study}`"
    )


# ---- the submitter's tracking login, handed to the job's driver


def hand_login(root: Path, study: str) -> dict:
    """The submitter's login to the tracking server (MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN, or
    ~/.mlflow/credentials), written to a file only its owner reads, in the study's state folder (which the
    head sees); returns the job env_vars that name the file. Not the values themselves: a job's runtime_env is
    shown by `ray job list` and the dashboard, and Ray's agents log it."""
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    login = {"MLFLOW_TRACKING_USERNAME": creds.username, "MLFLOW_TRACKING_PASSWORD": creds.password}
    login["MLFLOW_TRACKING_TOKEN"] = os.environ.get("MLFLOW_TRACKING_TOKEN")
    login = {k: v for k, v in login.items() if v}
    if not login:
        return {}
    path = control_dir(root) / f".{study}.login"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        json.dump(login, f)
    return {LOGIN_ENV: str(path)}


def take_login() -> None:
    """In the job's driver: the submitter's login into this process's environment, and its file deleted."""
    path = Path(os.environ.pop(LOGIN_ENV, "") or "")
    if not path.name:
        return
    try:
        os.environ.update(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{LOGIN_ENV}: cannot read the submitter's tracking login at {path} ({exc}): the head must see the "
            "storage as the submitting user does; or give the head's `ray start` MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD of its own"
        ) from None
    path.unlink(missing_ok=True)


# ---- submitting


def _study_argument(study: str, project: Path) -> str:
    """The study as the job's driver names it: a built-in name as is, a file relative to the project folder
    (which ships with the job)."""
    path = Path(study).expanduser()
    if not path.is_file():
        return study
    try:
        return path.resolve().relative_to(project).as_posix()
    except ValueError:
        raise UserError(
            f"{study}: the study file must be inside the folder you submit from ({project}), which ships to the "
            "cluster with the job; copy it there or submit from its folder"
        ) from None


def _working_dir(plan, project: Path, study_file: bool) -> dict | None:
    """The job's runtime_env `working_dir`: the project folder when the trainable's code or the study file is
    in it (the same excludes as a sweep's own shipping: environments, checkpoints, the data directory...)."""
    from tracking import data_home

    from ._ship import EXCLUDES, project_env

    local = [data_home(), plan.state_root, *(Path(v) for k, v in plan.inputs.items() if v and k != "download")]
    ship = project_env(plan.trainable, local)
    if ship is None and study_file:
        ship = {"working_dir": str(project), "excludes": list(EXCLUDES)}
        for path in local:
            try:
                inside = Path(path).resolve().relative_to(project)
            except (ValueError, TypeError):
                continue
            if inside.parts:
                ship["excludes"].append(f"/{inside.as_posix()}/")
    return ship


def submit(plan, study: str, flags: list[str], server: str | None = None) -> dict:
    """Send the planned sweep's driver to the cluster as a Ray Job. Everything was validated by `plan` (and is
    again here: storage, tracking store, job server, an active job of the study) before anything is sent.
    Returns the record written to control/STUDY.job."""
    locations, root, name = plan.locations, plan.state_root, plan.spec.name
    url, origin = job_server(server, locations.address, locations.origin("address"))
    local = is_local(url)
    if not local:
        _check_reachable_stores(locations, url)
    client = connect(url, origin)
    _refuse_active_job(root, name)
    project = Path.cwd().resolve()
    argument = _study_argument(study, project)
    ship = _working_dir(plan, project, Path(study).expanduser().is_file())
    env_vars = _job_env(locations, root, name, local)
    entrypoint = _entrypoint([argument, *flags])
    job = {
        "entrypoint": entrypoint,
        "submission_id": f"hpsearch-{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        "runtime_env": {"env_vars": env_vars, **(ship or {})},
        "metadata": {"hpsearch_study": name},
        "entrypoint_num_cpus": 0,
    }
    job_id = _send(client, job, url, origin, login=env_vars.get(LOGIN_ENV))
    record = {
        "job_id": job_id,
        "job_server": url,
        "study": name,
        "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "entrypoint": entrypoint,
        "working_dir": (ship or {}).get("working_dir"),
    }
    write_record(root, name, record)
    return {**record, "record": str(record_path(root, name))}


def _check_reachable_stores(locations, url: str) -> None:
    """A driver on another machine (the head) needs a storage and a tracking store that it reaches too."""
    if locations.storage is None:
        raise UserError(
            f"submit: the job's driver runs on the head ({url}), which cannot see this machine's data directory: "
            "set a shared storage that every node and this machine mount (--storage, HPSEARCH_STORAGE, or "
            "storage: in the config file)"
        )
    uri = locations.tracking_uri or ""
    if not uri or uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        raise UserError(
            f"submit: the job's driver runs on the head ({url}): the tracking store must be one it reaches too "
            f"(an MLflow server, or a database), not {uri or 'the local default'} "
            "(--tracking-uri, HPSEARCH_TRACKING_URI, or tracking_uri: in the config file)"
        )


def _refuse_active_job(root: Path, name: str) -> None:
    previous = read_record(root, name)
    if previous is not None:
        state = job_state(previous, logs=False)
        if state["state"] in ACTIVE:
            raise active_job_error(name, previous, state)


def _job_env(locations, root: Path, name: str, local: bool) -> dict[str, str]:
    """The driver's environment: the same locations as this command's, and the submitter's tracking login."""
    from tracking import data_home

    env_vars = {}
    if locations.tracking_uri:
        env_vars["HPSEARCH_TRACKING_URI"] = locations.tracking_uri
    if locations.storage:
        env_vars["HPSEARCH_STORAGE"] = str(root)
    if local:  # the head is this machine: the driver uses this data directory (and its default stores)
        env_vars["HPSEARCH_HOME"] = str(data_home())
    env_vars.update(hand_login(root, name))
    return env_vars


def _entrypoint(arguments: list[str]) -> str:
    """The driver joins the cluster it runs in: Ray gives a job's driver the GCS address as RAY_ADDRESS. It runs
    `hpsearch` from the PATH the head's `ray start` had: where there is none, one line says what to do (`show`
    prints it with the FAILED state) instead of the shell's "not found"."""
    return (
        f"command -v hpsearch >/dev/null || {{ echo {shlex.quote(NO_HPSEARCH)} >&2; exit 127; }}; "
        f'exec hpsearch run {shlex.join(arguments)} --address "$RAY_ADDRESS"'
    )


def _send(client, job: dict, url: str, origin: str, login: str | None) -> str:
    """Submit the job, waiting up to AGENT_WAIT_S for a head that has just started; returns its id. When it
    cannot be sent, the login file handed to it (`login`) is removed: no job will read it."""
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(**job)
        except Exception as exc:
            # Just after `ray start --head` the head's agent that runs jobs may not be up yet.
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                if login is not None:  # it does not stay on the storage
                    Path(login).unlink(missing_ok=True)
                raise _server_error(url, origin, exc) from None
            time.sleep(2)


def _recorded(root: Path, study: str) -> dict:
    record = read_record(root, study)
    if record is None:
        raise UserError(
            f"study {study!r} has no submitted job recorded under {control_dir(root)} (see `hpsearch "
            f"submit`; --storage names the shared storage it was submitted with); give a TRIAL for a trial's output"
        )
    return record


def logs(root: Path, study: str) -> tuple[dict, str]:
    """(the recorded job, its driver's output so far)."""
    record = _recorded(root, study)
    client = connect(record["job_server"])
    try:
        return record, client.get_job_logs(record["job_id"])
    except Exception as exc:
        raise _server_error(record["job_server"], "the recorded job server", exc) from None


def follow(root: Path, study: str):
    """(the recorded job, an iterator over its driver's output from the start, chunk by chunk, that ends when
    the job does), as `ray job logs --follow` streams it over the job server's websocket."""
    import asyncio

    record = _recorded(root, study)
    client = connect(record["job_server"])

    def chunks():
        stream = client.tail_job_logs(record["job_id"])
        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    yield loop.run_until_complete(anext(stream))
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise _server_error(record["job_server"], "the recorded job server", exc) from None
        finally:  # the job ended, or Ctrl-C: close the websocket (and the session) before the loop
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            with contextlib.suppress(Exception):
                loop.run_until_complete(stream.aclose())
            loop.close()

    return record, chunks()


def stop(root: Path, study: str) -> dict | None:
    """Stop the recorded job through the job server when it is active; returns the record, or None."""
    record = read_record(root, study)
    if record is None:
        return None
    state = job_state(record, logs=False)
    if state["state"] not in ACTIVE:
        return None
    connect(record["job_server"]).stop_job(record["job_id"])
    return record
