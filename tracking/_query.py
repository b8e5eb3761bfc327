"""Reading what a study's runs hold: the rows behind `results`, the latest parent run, the test cache."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from mlflow.entities import Run, ViewType

from . import tags as t
from ._runs import child_runs, paged
from ._store import Store

_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EXPERIMENTS_PER_SEARCH = 500  # experiment ids in one search_runs (the SQL store puts them in one IN (...))


def parent_runs(store: Store, study: str, limit: int | None = None, run_id: str | None = None) -> list[Run]:
    """The study's `hpsearch run` invocations, newest first; [] when the study has no records.

    `limit` keeps the newest few (`results` reads the latest: one run, not all of them); `run_id` keeps that one
    run (if it is one of the study's)."""
    if not store.exists():
        return []
    exp = store.experiment_id(study)
    if exp is None:
        return []
    where = f"tags.`{t.KIND}` = 'study'"
    if run_id is not None:
        if not _RUN_ID.fullmatch(run_id):  # not a run id (and nothing to put in a filter string)
            return []
        where += f" and attributes.run_id = '{run_id}'"
    return list(
        paged(
            store.client.search_runs,
            [exp],
            filter_string=where,
            run_view_type=ViewType.ACTIVE_ONLY,
            order_by=["attributes.start_time DESC"],
            limit=limit,
        )
    )


def trial_rows(store: Store, parent: Run) -> list[dict[str, Any]]:
    """One plain dict per trial of a parent run (unsorted)."""
    rows = []
    for run in child_runs(store, parent.info.experiment_id, parent.info.run_id):
        tags = run.data.tags
        if tags.get(t.KIND, "trial") != "trial":  # promote's retrainings (kind "reseed") are not search trials
            continue
        rows.append(
            {
                "trial_id": tags.get(t.TRIAL_ID, run.info.run_name),
                "state": tags.get(t.STATE, "running"),
                "metric": run.data.metrics.get(t.BEST_VALUE),
                "epochs": int(tags[t.EPOCHS]) if t.EPOCHS in tags else None,
                "best_epoch": int(tags[t.BEST_EPOCH]) if t.BEST_EPOCH in tags else None,
                "train_seconds": float(tags[t.TRAIN_SECONDS]) if t.TRAIN_SECONDS in tags else None,
                "reason": tags.get(t.REASON),
                "params": json.loads(tags.get(t.PARAMS, "{}")),
                "seconds": (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None,
                "trial_dir": tags.get(t.TRIAL_DIR) or None,
                "run_id": run.info.run_id,
                "status": run.info.status,
            }
        )
    return rows


def cached_test_metrics(store: Store, study: str, digest: str) -> dict[str, float] | None:
    """Test metrics already measured for a checkpoint with this digest, in any run of the study."""
    exp = store.experiment_id(study)
    if exp is None:
        return None
    runs = store.client.search_runs([exp], filter_string=f"tags.`{t.TEST_DIGEST}` = '{digest}'", max_results=1)
    if not runs:
        return None
    return {k: v for k, v in runs[0].data.metrics.items() if k.startswith("test_")}


def recorded_studies(store: Store) -> dict[str, int]:
    """Study name -> number of `hpsearch run` invocations recorded.

    One paged search for the experiments, then one paged search of the parent runs over all of them (not one
    search per experiment): a round trip per page, whatever the number of studies."""
    if not store.exists():
        return {}
    client = store.client
    names = {exp.experiment_id: exp.name for exp in paged(client.search_experiments)}
    ids = list(names)
    counts: Counter[str] = Counter()
    for i in range(0, len(ids), _EXPERIMENTS_PER_SEARCH):
        for run in paged(
            client.search_runs,
            ids[i : i + _EXPERIMENTS_PER_SEARCH],
            filter_string=f"tags.`{t.KIND}` = 'study'",
            run_view_type=ViewType.ACTIVE_ONLY,
        ):
            counts[run.info.experiment_id] += 1
    return {name: counts[exp] for exp, name in names.items() if counts[exp]}
