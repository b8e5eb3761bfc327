"""Querying a study's records: the rows behind `hpsearch results`, as a pandas DataFrame."""

from __future__ import annotations

import math

import pandas as pd

import tracking
from tracking import tags as T

from ._spec import check_name
from .errors import UserError

COLUMNS = ["rank", "trial_id", "state", "metric", "epochs", "best_epoch", "reason", "params", "run_id"]


def study_run(study: str, tracking_uri: str | None = None, run_id: str | None = None):
    """The parent run to read: the latest `hpsearch run` of the study, or the one given by `run_id`."""
    check_name(study)
    store = tracking.Store(tracking_uri)
    runs = tracking.parent_runs(store, study)
    if not runs:
        raise UserError(f"no records for study {study!r} in {store.tracking_uri}; run `hpsearch run {study}` first")
    if run_id is None:
        return store, runs[0]
    for run in runs:
        if run.info.run_id == run_id:
            return store, run
    raise UserError(f"--run: study {study!r} has no run {run_id!r}")


def results(
    study: str, top: int | None = None, tracking_uri: str | None = None, run_id: str | None = None
) -> pd.DataFrame:
    """One row per trial, best first (failed and unmeasured trials last)."""
    store, parent = study_run(study, tracking_uri, run_id)
    mode = parent.data.tags.get(T.MODE) or parent.data.params.get("mode", "max")
    rows = tracking.trial_rows(store, parent)
    best = parent.data.tags.get(T.BEST_TRIAL)

    def key(row):
        value = row["metric"]
        missing = value is None or (isinstance(value, float) and math.isnan(value)) or row["state"] == "failed"
        # Among equal values, the trial the run chose (whose checkpoint was logged and tested) ranks first.
        return (missing, 0.0 if missing else (-value if mode == "max" else value), row["trial_id"] != best,
                row["trial_id"])  # fmt: skip

    rows.sort(key=key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.attrs.update(metric=parent.data.tags.get(T.METRIC) or parent.data.params.get("metric"), mode=mode,
                       run_id=parent.info.run_id)  # fmt: skip
    return frame.head(top) if top else frame
