"""Querying a study's records: the rows behind `hpsearch results`, as a pandas DataFrame."""

from __future__ import annotations

import time

import pandas as pd

import tracking
from tracking import tags as T

from ._spec import check_name
from ._summary import StudySummary
from .errors import UserError
from .words import FAILED, FINISHED, STATES, rank_key

COLUMNS = [
    "rank",
    "trial_id",
    "state",
    "metric",
    "epochs",
    "best_epoch",
    "reason",
    "seconds",
    "train_seconds",
    "params",
    "run_id",
    "trial_dir",
]


def study_run(study: str, tracking_uri: str | None = None, run_id: str | None = None):
    """The parent run to read: the latest `hpsearch run` of the study, or the one given by `run_id`."""
    check_name(study)
    store = tracking.Store(tracking_uri)
    runs = tracking.parent_runs(store, study, limit=1)  # the latest only: a study may have many runs
    if not runs:
        raise UserError(
            f"no records for study {study!r} in {tracking.redacted(store.tracking_uri)}; "
            f"run `hpsearch run {study}` first"
        )
    if run_id is None or runs[0].info.run_id == run_id:
        return store, runs[0]
    runs = tracking.parent_runs(store, study, run_id=run_id)
    if runs:
        return store, runs[0]
    raise UserError(f"--run: study {study!r} has no run {run_id!r}")


def results(
    study: str,
    top: int | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    state: str | None = None,
    where: str | None = None,
    sort: str | None = None,
) -> pd.DataFrame:
    """One row per trial, best first (failed and unmeasured trials last).

    `state` keeps one state; `where` is a pandas query over the columns and the params (`lr < 0.01`);
    `sort` orders by a column or param (`name:desc` or `-name` for descending) instead of the rank.
    """
    if state is not None and state not in STATES:
        raise UserError(f"--state: {state!r} is not one of {', '.join(STATES)}")
    store, parent = study_run(study, tracking_uri, run_id)
    mode = parent.data.tags.get(T.MODE) or parent.data.params.get("mode", "max")
    rows = tracking.trial_rows(store, parent)
    best = parent.data.tags.get(T.BEST_TRIAL)

    def key(row):
        value = None if row["state"] == FAILED else row["metric"]
        # Among equal values, the trial the run chose (whose checkpoint was logged and tested) ranks first.
        return *rank_key(value, mode), row["trial_id"] != best, row["trial_id"]

    rows.sort(key=key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if state is not None:
        frame = frame[frame["state"] == state]
    if where is not None:
        try:
            kept = _flat(frame).query(where, engine="python").index
        except Exception as exc:  # pandas raises many kinds for a bad expression; all are the user's
            raise UserError(
                f"--where: cannot apply {where!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        frame = frame.loc[kept]
    if sort is not None:
        descending = sort.startswith("-") or sort.endswith(":desc")
        key = sort.removeprefix("-").removesuffix(":desc").removesuffix(":asc")
        flat = _flat(frame)
        if key not in flat.columns and not frame.empty:
            raise UserError(f"--sort: no column or param {key!r}; have: {', '.join(flat.columns)}")
        if not frame.empty:
            order = flat.sort_values(key, ascending=not descending, na_position="last", kind="stable")
            frame = frame.loc[order.index]
    frame.attrs.update(
        metric=parent.data.tags.get(T.METRIC) or parent.data.params.get("metric"),
        mode=mode,
        run_id=parent.info.run_id,
        budget=parent.data.params.get("budget", "epochs"),  # what ASHA's rungs counted
    )
    return frame.head(top) if top else frame


def _flat(frame: pd.DataFrame) -> pd.DataFrame:
    """For queries: each param as a column of its own (NaN where a trial lacks it); a param named like a
    column (say `state`) is left to the column."""
    return flat_results(frame, prefix="")


def flat_results(frame: pd.DataFrame, prefix: str = "param.") -> pd.DataFrame:
    """For csv and parquet: params as `param.NAME` columns."""
    params = pd.DataFrame(frame["params"].tolist(), index=frame.index).add_prefix(prefix)
    params = params[[c for c in params.columns if c not in frame.columns]]
    return frame.drop(columns=["params"]).join(params)


def summary(study: str, tracking_uri: str | None = None, run_id: str | None = None) -> tuple[StudySummary, dict]:
    """`hpsearch show`: the live-progress summary, rebuilt from what MLflow holds (for a sweep running in
    another shell, or a finished one), plus the run's status."""
    store, parent = study_run(study, tracking_uri, run_id)
    frame = results(study, tracking_uri=tracking_uri, run_id=parent.info.run_id)
    info, params = parent.info, parent.data.params
    end_ms = info.end_time or int(time.time() * 1000)
    done = frame[frame["seconds"].notna()]
    counts = {s: int((frame["state"] == s).sum()) for s in STATES}
    ok = frame[frame["state"].isin(FINISHED) & frame["metric"].notna()]
    best = ok.iloc[0] if not ok.empty else None
    hours = params.get("hours")
    result = StudySummary(
        study=study,
        metric=frame.attrs.get("metric") or "metric",
        counts=counts,
        elapsed_s=(end_ms - info.start_time) / 1000,
        trials=int(params.get("trials", len(frame))),
        hours=float(hours) if hours not in (None, "None") else None,
        concurrency=int(params.get("max_concurrent", 1)),
        best_value=None if best is None else float(best["metric"]),
        best_trial=None if best is None else best["trial_id"],
        best_params={} if best is None else dict(best["params"]),
        mean_trial_s=float(done["seconds"].mean()) if not done.empty else None,
        disk_bytes=_disk_bytes(parent.data.tags.get(T.RAY_EXPERIMENT), info.artifact_uri),
    )
    status = {
        "run_id": info.run_id,
        "status": info.status,
        "run_name": info.run_name,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.start_time / 1000)),
    }
    status["resume"] = tracking.resume_note(study, info.status, parent.data.tags)  # what `run --resume` would complete
    if params.get("budget") == "seconds":
        status["asha"] = (
            f"asha: rungs in seconds of each trial's own training: max_t {params['max_t']} s, grace_period "
            f"{params['grace_period']} s, at most {params['max_epochs']} epochs"
        )
    return result, status


def _disk_bytes(*locations: str | None) -> int | None:
    """Bytes under the local folders among `locations` (paths or file: URIs); None when none is local."""
    from pathlib import Path
    from urllib.parse import urlparse

    total, local = 0, False
    for location in locations:
        if not location:
            continue
        parsed = urlparse(location)
        if parsed.scheme not in ("", "file"):
            continue
        path = Path(parsed.path if parsed.scheme == "file" else location)
        if path.exists():
            local = True
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return total if local else None
