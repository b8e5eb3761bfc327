"""The Python API; the CLI is a thin shell over these functions.

The queries (`results`, `show`, `models`, `logs`, `stop`, ...) read MLflow and files only: this module imports
neither torch nor Ray, and neither do they. The engine (`plan`, `execute`, `run`, `promote --candidates`)
and the trainables (torch) are imported by the functions that need them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import studies
import tracking
from studies import UserError
from tracking import tags as T

from .cluster._locations import resolve
from .review import _promote

if TYPE_CHECKING:
    import pandas as pd

    from .engine._plan import Plan
    from .engine._sweep import Outcome

_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _uri(tracking_uri: str | None) -> str | None:
    """The tracking URI in force: the argument, else HPSEARCH_TRACKING_URI, else the config file's."""
    return resolve(tracking_uri=tracking_uri).tracking_uri


def results(study: str, top: int | None = None, tracking_uri: str | None = None, **query: Any) -> pd.DataFrame:
    """`hpsearch results`: one row per trial, best first (see studies.results for `state`, `where`, `sort`)."""
    return studies.results(study, top=top, tracking_uri=_uri(tracking_uri), **query)


def show(study: str, tracking_uri: str | None = None, run_id: str | None = None, storage: str | None = None):
    """`hpsearch show`: (summary, status) of the study's latest run, or of `run_id`. When the study's latest
    submission (`hpsearch submit`) is recorded (on `storage`), status["job"] is its job's state (`job_state`);
    a job whose driver has not recorded a run yet gives (None, status)."""
    job = job_state(study, storage) if run_id is None else None
    try:
        summary, status = studies.summary(study, tracking_uri=_uri(tracking_uri), run_id=run_id)
    except UserError:
        if job is None:
            raise
        return None, {"job": job}
    if job is not None:
        status["job"] = job
    return summary, status


def _state_root(storage: str | None):
    """The folder holding the studies' shared state (and `submit`'s job records): `storage` resolved."""
    return resolve(storage=storage).state_root(tracking.data_home())


def job_state(study: str, storage: str | None = None) -> dict | None:
    """The state of the study's latest submitted job (job_id, job_server, submitted, state: PENDING, RUNNING,
    SUCCEEDED, FAILED, STOPPED or unknown, message, error_lines), or None when none is recorded."""
    from .cluster._jobs import job_state as state
    from .cluster._jobs import read_record

    studies.check_name(study)
    record = read_record(_state_root(storage), study)
    return None if record is None else state(record)


def follow(study: str, storage: str | None = None):
    """`hpsearch logs STUDY --follow`: (the recorded job, an iterator over its driver's output, chunk by chunk,
    from the start until the job ends)."""
    from .cluster._jobs import follow as follow_job

    studies.check_name(study)
    return follow_job(_state_root(storage), study)


def plan(
    study: str,
    tracking_uri: str | None = None,
    address: str | None = None,
    storage: str | None = None,
    warm_start: str | None = None,
    warm_count: int = 5,
    resume: bool = False,
    fresh: bool = False,
    **overrides: Any,
) -> Plan:
    """Check a sweep (the study, the flags, the locations, the data), writing nothing; see search.engine._plan.plan."""
    studies.sweep_study(study, **overrides)  # a malformed study: refused before the engine's imports
    tracking.Store(_uri(tracking_uri)).check()
    from .engine._plan import plan as plan_sweep

    return plan_sweep(
        study,
        tracking_uri=tracking_uri,
        address=address,
        storage=storage,
        warm_start=warm_start,
        warm_count=warm_count,
        resume=resume,
        fresh=fresh,
        **overrides,
    )


def execute(plan: Plan, out=None) -> Outcome:
    """Run a planned sweep; see search.engine._sweep.execute."""
    from .engine._sweep import execute as run_sweep

    return run_sweep(plan, out=out)


def submit(
    study: str,
    tracking_uri: str | None = None,
    address: str | None = None,
    storage: str | None = None,
    job_server: str | None = None,
    warm_start: str | None = None,
    warm_count: int = 5,
    resume: bool = False,
    fresh: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """`hpsearch submit`: check the sweep as `run` would (writing nothing), then send its driver to the cluster
    as a Ray Job and return at once. Returns the submission's record (job_id, job_server, study, ...)."""
    from pathlib import Path

    from .cluster._jobs import submit as send

    checked = plan(
        study,
        tracking_uri=tracking_uri,
        address=address,
        storage=storage,
        warm_start=warm_start,
        warm_count=warm_count,
        resume=resume,
        fresh=fresh,
        **overrides,
    )
    flags: list[str] = []
    for name, value in overrides.items():
        if value is None:
            continue
        if name == "data_root":
            value = str(Path(value).expanduser().absolute())
        flags += [f"--{name.replace('_', '-')}", str(value)]
    if warm_start is not None:
        flags += ["--warm-start", warm_start, "--warm-count", str(warm_count)]
    flags += ["--resume"] if resume else []
    flags += ["--fresh"] if fresh else []
    return send(checked, study, flags, job_server)


def run(
    study: str,
    tracking_uri: str | None = None,
    address: str | None = None,
    storage: str | None = None,
    warm_start: str | None = None,
    warm_count: int = 5,
    resume: bool = False,
    fresh: bool = False,
    out=None,
    **overrides: Any,
) -> Outcome:
    """`hpsearch run`: overrides are trials, hours, max_concurrent, gpus_per_trial, seed, data_root. `resume` continues
    the study's unfinished run; `fresh` starts a new one in its place."""
    return execute(
        plan(
            study,
            tracking_uri=tracking_uri,
            address=address,
            storage=storage,
            warm_start=warm_start,
            warm_count=warm_count,
            resume=resume,
            fresh=fresh,
            **overrides,
        ),
        out=out,
    )


# `hpsearch promote`: search/review/_promote.py (imports neither torch nor Ray until it retrains or exports).
promote = _promote.promote


def report(
    study: str, output: str | None = None, tracking_uri: str | None = None, run_id: str | None = None
) -> tuple[str, list[str]]:
    """`hpsearch report`: write the study's HTML report (and log it to the parent run); returns its path and
    the top trials' diagnoses."""
    import os
    import sys

    from .review._report import build_report

    if os.getcwd() not in sys.path:  # a `pkg.module:function` trainable resolves from where hpsearch started
        sys.path.insert(0, os.getcwd())
    path, diagnoses = build_report(study, output=output, tracking_uri=_uri(tracking_uri), run_id=run_id)
    return str(path), diagnoses


def rollback(name: str, alias: str = "champion", tracking_uri: str | None = None) -> dict[str, Any]:
    """`hpsearch rollback`: point `alias` back at the version it had before the last promotion (and keep
    the demoted one as the previous alias, so a second rollback undoes the first)."""
    if not _ALIAS.match(alias):
        raise UserError(f"--alias: {alias!r} is not allowed: letters, digits, '-', '_'")
    store = tracking.Store(_uri(tracking_uri))
    known = {r["name"] for r in tracking.registered_models(store)}
    if name not in known:
        raise UserError(
            f"no registered model {name!r} in {tracking.redacted(store.tracking_uri)}"
            + (f"; registered: {', '.join(sorted(known))}" if known else "")
        )
    info = tracking.rollback(store, name, alias)
    if info is None:
        raise UserError(f"model {name!r} has no @{alias} and @{tracking.previous_alias(alias)} pair to swap")
    return info


def models(tracking_uri: str | None = None) -> pd.DataFrame:
    """`hpsearch models`: every registered model version, its aliases, study, trial and test metrics."""
    import pandas as pd

    return pd.DataFrame(tracking.registered_models(tracking.Store(_uri(tracking_uri))))


def stop(study: str, storage: str | None = None) -> str:
    """`hpsearch stop`: ask a sweep running in another shell (or on another machine that shares the storage)
    to end cleanly. Returns the request file. Refuses when no sweep of the study is running there."""
    from .cluster._studylock import read_lock, request_stop

    studies.check_name(study)
    locations = resolve(storage=storage)
    root = locations.state_root(tracking.data_home())
    if read_lock(root, study) is None:
        from .cluster._jobs import stop as stop_job

        job = stop_job(root, study)  # submitted, and its driver has not taken the lock yet
        if job is not None:
            return f"Ray job {job['job_id']} (asked its job server {job['job_server']} to stop it)"
        where = f"storage {root} ({locations.origin('storage')})" if locations.storage else f"data directory {root}"
        raise UserError(f"no sweep of study {study!r} is running in the {where}: nothing to stop")
    return str(request_stop(root, study))


def logs(
    study: str,
    trial: str | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    storage: str | None = None,
) -> list[tuple[str, str]]:
    """`hpsearch logs`: (name, text) of a trial's output (stdout and stderr) and Ray's error file; without a
    trial, the output of the study's submitted job's driver (`hpsearch submit`)."""
    from pathlib import Path

    from .cluster._locations import trial_log

    if trial is None:
        from .cluster._jobs import logs as job_logs

        studies.check_name(study)
        record, text = job_logs(_state_root(storage), study)
        return [(f"Ray job {record['job_id']} on {record['job_server']}", text)]

    store, parent = studies.study_run(study, _uri(tracking_uri), run_id)
    rows = [r for r in tracking.trial_rows(store, parent) if r["trial_id"] == trial]
    if not rows:
        raise UserError(f"study {study!r} has no trial {trial!r} in run {parent.info.run_id}")
    experiment, trial_dir = parent.data.tags.get(T.RAY_EXPERIMENT), rows[0].get("trial_dir")
    paths = [trial_log(experiment, trial)] if experiment else []
    paths += [Path(trial_dir) / name for name in ("output.log", "error.txt")] if trial_dir else []
    out = [(str(p), p.read_text(errors="replace")) for p in paths if p.is_file()]
    if not out:
        raise UserError(
            f"trial {trial}: no output of it on this machine (looked in "
            f"{', '.join(str(p.parent) for p in paths) or '(no folder recorded)'})"
        )
    return out


def ui_command(
    study: str | None = None, tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000
) -> tuple[list[str], str]:
    """`hpsearch ui`: the `mlflow ui` command for the study's store, and the URL to open."""
    import sys

    store = tracking.Store(_uri(tracking_uri))
    if store.tracking_uri.startswith(("http://", "https://", "databricks")):
        raise UserError(f"--tracking-uri {store.tracking_uri} is a server with its own UI: open it in a browser")
    if not store.exists():
        raise UserError(f"no records under {store.home}; run a study first (or give --tracking-uri)")
    if not 0 < port < 65536:
        raise UserError(f"--port: {port} is not a port number")
    url = f"http://{host}:{port}/"
    if study is not None:
        studies.check_name(study)
        exp = store.experiment_id(study)
        if exp is None:
            raise UserError(f"no records for study {study!r} in {tracking.redacted(store.tracking_uri)}")
        url += f"#/experiments/{exp}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        store.tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    return command, url


def list_studies(tracking_uri: str | None = None) -> pd.DataFrame:
    """Built-in studies and studies with records in the store."""
    import pandas as pd

    store = tracking.Store(_uri(tracking_uri))
    recorded = tracking.recorded_studies(store)
    names = sorted(set(studies.builtin_studies()) | set(recorded))
    return pd.DataFrame(
        [{"study": n, "builtin": n in studies.builtin_studies(), "runs": recorded.get(n, 0)} for n in names]
    )


def trainables_table() -> list[dict[str, Any]]:
    """`hpsearch trainables`: the registered trainables. Importing the built-in ones imports torch."""
    from trainables import list_trainables

    return [
        {
            "name": t.name,
            "metric": t.metric,
            "mode": t.mode,
            "description": t.description,
            "hyperparameters": dict(t.hyperparameters),
            "defaults": dict(t.defaults),
        }
        for t in list_trainables()
    ]
