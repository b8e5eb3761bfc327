"""Writing a study's runs: one parent run per `hpsearch run`, one child run per trial.

All writes happen in the driver process (Ray workers never touch MLflow), so the sqlite default has one
writer and never sees "database is locked". Per-epoch metrics are buffered and written with log_batch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from ._store import Store
from .tags import (
    BEST_TRIAL,
    BEST_VALUE,
    FINISH,
    FINISH_STEPS,
    KIND,
    PARAMS,
    REASON,
    RESUMES,
    STATE,
    STUDY,
    STUDY_RUN,
    SWEPT,
    TRIAL_DIR,
    TRIAL_ID,
    TRIAL_RUN,
)

_BATCH = 1000  # MLflow's log_batch limit on metrics per call
# Rows per search request, for every search (runs, experiments, registered models, model versions): reads
# follow MLflow's page tokens instead of asking for everything at once, which a server refuses above 50,000
# runs (1,000 registered models) and the SQL store would load into memory in one go. 1,000 is MLflow's own
# default page for runs and experiments and its ceiling for registered models; with the SQL store each page is
# one query (an OFFSET), so 2,000 trials take 3 round trips.
PAGE = 1000
_FLUSH_EVERY_S = 5.0  # so a live `results` sees recent epochs without a write per epoch

OUTAGE_ENV = "HPSEARCH_TRACKING_OUTAGE_S"
DEFAULT_OUTAGE_S = 900.0  # how long a sweep waits out an unreachable tracking server before it gives up
_TRANSIENT = (
    "Max retries exceeded",
    "Connection refused",
    "ConnectionError",
    "timed out",
    "Timeout",
    "Temporary failure",
    "Connection reset",
    "RemoteDisconnected",
    "server closed the connection",
    "could not connect",
    "502",
    "503",
    "504",
)


def transient(exc: BaseException) -> bool:
    """Whether a tracking write failed because the server or database could not be reached (worth retrying),
    rather than because of what was written."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in _TRANSIENT)


class Patient:
    """An MlflowClient whose calls wait out an unreachable tracking server: each call is retried, with
    waits of up to 5 s, for up to HPSEARCH_TRACKING_OUTAGE_S (15 minutes). The sweep's trials go on
    meanwhile on the cluster; what they report waits in Ray until the driver's write goes through. A
    server that stopped answering rejected the failed requests, so a retried write is written once."""

    def __init__(self, client, warn=None):
        self._client = client
        self._warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
        self._down_since: float | None = None

    def __getattr__(self, name):
        call = getattr(self._client, name)
        if not callable(call):
            return call

        def patient(*args, **kwargs):
            wait = 0.5
            while True:
                try:
                    result = call(*args, **kwargs)
                except Exception as exc:
                    if not transient(exc):
                        raise
                    now = time.monotonic()
                    if self._down_since is None:
                        self._down_since = now
                        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                        self._warn(
                            f"tracking store unreachable ({first}); retrying for up to "
                            f"{_outage_s():.0f} s, the sweep goes on"
                        )
                    if now - self._down_since > _outage_s():
                        raise
                    time.sleep(wait)
                    wait = min(wait * 2, 5.0)
                    continue
                if self._down_since is not None:
                    self._warn(f"tracking store reachable again after {time.monotonic() - self._down_since:.0f} s")
                    self._down_since = None
                return result

        return patient


def _outage_s() -> float:
    return float(os.environ.get(OUTAGE_ENV, DEFAULT_OUTAGE_S))


class StudyRecorder:
    """The driver's handle on one study invocation's MLflow records."""

    def __init__(self, store: Store, study: str, tags: Mapping[str, str]):
        self.store = store
        self.study = study
        self.tags = dict(tags)  # provenance carried by every run
        self.parent_id: str | None = None
        self._children: dict[str, str] = {}  # trial_id -> run_id, of the trials running now
        self._recorded: dict[str, tuple[str, str]] = {}  # trial_id -> (run_id, status), from before a resume
        self._closed: set[str] = set()
        self._experiment_id: str | None = None  # looked up once, not per trial
        self._pending: dict[str, list[Metric]] = {}
        self._pending_params: dict[str, list[Param]] = {}  # a new trial's params, written with its first batch
        # trial_id -> metric -> the last step recorded (written or buffered): a trial rerun from a checkpoint after
        # a crash or a retry reports epochs MLflow already holds, and each epoch is recorded once.
        self._steps: dict[str, dict[str, int]] = {}
        self._saved_pending: dict[str, list[Metric]] = {}  # buffered epochs from Ray's last snapshot (a resume)
        self._last_flush = time.monotonic()
        self._patient: Patient | None = None

    @property
    def client(self) -> Patient:
        """The store's client, waiting out an outage of the tracking server (every write of a sweep)."""
        if self._patient is None:
            self._patient = Patient(self.store.client)
        return self._patient

    # ---- parent ----
    def start(self, params: Mapping[str, Any], spec_text: str, run_name: str) -> str:
        client = self.client
        exp = self._experiment_id = self.store.experiment_id(self.study, create=True)
        tags = {**self.tags, KIND: STUDY_RUN, STUDY: self.study, MLFLOW_RUN_NAME: run_name}
        run = client.create_run(exp, tags=tags, run_name=run_name)
        self.parent_id = run.info.run_id
        client.log_batch(self.parent_id, params=[Param(k, _param(v)) for k, v in params.items()])
        client.log_text(self.parent_id, spec_text, "study.yaml")
        return self.parent_id

    def resume(self, parent_id: str) -> None:
        """Continue an earlier invocation's parent run: the same run, its trials' child runs reattached."""
        client = self.client
        parent = client.get_run(parent_id)
        self.parent_id, self._experiment_id = parent_id, parent.info.experiment_id
        client.update_run(parent_id, status="RUNNING")
        self.set_parent_tags({RESUMES: int(parent.data.tags.get(RESUMES, 0)) + 1})
        self._recorded = {
            run.data.tags[TRIAL_ID]: (run.info.run_id, run.info.status)
            for run in child_runs(self.store, parent.info.experiment_id, parent_id)
            if TRIAL_ID in run.data.tags and run.data.tags.get(KIND, TRIAL_RUN) == TRIAL_RUN
        }

    def unfinished_trials(self) -> list[str]:
        """Trials whose child runs the interruption left open: RUNNING (a crash) or KILLED (Ctrl-C, SIGTERM)."""
        return [tid for tid, (_, status) in self._recorded.items() if status in ("RUNNING", "KILLED")]

    def knows(self, trial_id: str) -> bool:
        """Whether the trial has a child run (open now, or recorded before a resume and not yet closed)."""
        return trial_id in self._children or trial_id in self._recorded or trial_id in self._closed

    def close_trial(self, trial_id: str, state: str, reason: str | None) -> None:
        """End a recorded trial that is not running now (reconciling after a crash)."""
        run_id, _ = self._recorded.pop(trial_id)
        self._closed.add(trial_id)
        tags = [RunTag(STATE, state)] + ([RunTag(REASON, reason)] if reason else [])
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, status="FAILED" if state == "failed" else "FINISHED")

    def attach(self, parent) -> None:
        """Add child runs to an existing parent run (an mlflow Run) without reopening it (promote's retrainings)."""
        self.parent_id, self._experiment_id = parent.info.run_id, parent.info.experiment_id

    def set_parent_tags(self, tags: Mapping[str, Any]) -> None:
        log_values(self.store, self.parent_id, tags=tags, client=self.client)

    def log_parent_metrics(self, metrics: Mapping[str, float]) -> None:
        log_values(self.store, self.parent_id, metrics=metrics, client=self.client)

    def finish(self, status: str = "FINISHED") -> None:
        """End the parent run, and the child runs of trials Ray never finished (Ctrl-C, an error). Every write is
        tried even when one fails (a deleted run, a store refusing): one bad record must not leave the parent
        RUNNING. The first failure is raised once all were tried."""
        errors: list[Exception] = []
        for trial_id in list(self._children):
            try:
                self.trial_ended(trial_id, "failed", {}, reason="interrupted", status="KILLED")
            except Exception as exc:
                errors.append(exc)
        try:
            self.client.set_terminated(self.parent_id, status=status)
        except Exception as exc:
            errors.append(exc)
        if errors:
            raise errors[0]

    def pending(self) -> dict[str, list[Metric]]:
        """Epochs reported but not written yet, by trial: saved with Ray's experiment snapshot, since a trial
        resumed from that snapshot does not report them again."""
        return {tid: list(metrics) for tid, metrics in self._pending.items() if metrics}

    def keep_pending(self, pending: Mapping[str, list[Metric]]) -> None:
        """The buffered epochs of Ray's snapshot (`pending`), written when their trials are reattached."""
        self._saved_pending = dict(pending)

    # ---- children ----
    def trial_started(
        self,
        trial_id: str,
        params: Mapping[str, Any],
        trial_dir: str | None = None,
        kind: str = TRIAL_RUN,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Open (or reattach) the trial's child run; returns its run id. `kind` other than "trial" (promote's
        retrainings) keeps the run out of `results`."""
        if trial_id in self._children:  # a retried trial keeps its one child run
            return self._children[trial_id]
        if trial_id in self._recorded:  # resumed after an interruption: its run continues
            run_id, _ = self._recorded.pop(trial_id)
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, STATE, "running")
            self._children[trial_id] = run_id
            self._reattach_steps(trial_id, run_id, params)
            return run_id
        exp = self._experiment_id or self.store.experiment_id(self.study)
        tags = {
            **self.tags,
            KIND: kind,
            STUDY: self.study,
            TRIAL_ID: trial_id,
            STATE: "running",
            PARAMS: json.dumps(dict(params), sort_keys=True),
            TRIAL_DIR: trial_dir or "",
            MLFLOW_PARENT_RUN_ID: self.parent_id,
            MLFLOW_RUN_NAME: trial_id,
            **(tags or {}),
        }
        run = self.client.create_run(exp, tags=tags, run_name=trial_id)
        self._children[trial_id] = run.info.run_id
        # Written with the trial's first batch of epochs (within _FLUSH_EVERY_S) or its end: one request less
        # per trial against a server (P6). Its exact config is in the PARAMS tag from the start.
        self._pending_params[trial_id] = [Param(k, _param(v)) for k, v in params.items()]
        return run.info.run_id

    def trial_tags(self, trial_id: str, tags: Mapping[str, Any]) -> None:
        """Tags on a running trial's child run."""
        if trial_id in self._children:
            log_values(self.store, self._children[trial_id], tags=tags, client=self.client)

    def _reattach_steps(self, trial_id: str, run_id: str, params: Mapping[str, Any]) -> None:
        """A resumed trial's run: the last step MLflow holds of each metric, then the snapshot's buffered epochs
        past it. The trial reruns from its checkpoint, and its reports up to there are not recorded again."""
        run = self.client.get_run(run_id)
        steps = self._steps[trial_id] = {
            key: max((m.step for m in self.client.get_metric_history(run_id, key)), default=-1)
            for key in run.data.metrics
        }
        for metric in self._saved_pending.pop(trial_id, []):
            if metric.step > steps.get(metric.key, -1):
                self._pending.setdefault(trial_id, []).append(metric)
                steps[metric.key] = metric.step
        if not run.data.params:  # it ended before its first batch was written
            self._pending_params[trial_id] = [Param(k, _param(v)) for k, v in params.items()]

    def _new(self, trial_id: str, metrics: list[Metric]) -> list[Metric]:
        """The metrics at steps past those recorded for the trial (each epoch once, over reruns)."""
        steps = self._steps.setdefault(trial_id, {})
        fresh = [m for m in metrics if m.step > steps.get(m.key, -1)]
        for m in fresh:
            steps[m.key] = m.step
        return fresh

    def trial_result(self, trial_id: str, step: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        fresh = self._new(trial_id, [Metric(k, float(v), now, step) for k, v in metrics.items()])
        self._pending.setdefault(trial_id, []).extend(fresh)
        if time.monotonic() - self._last_flush > _FLUSH_EVERY_S:
            self.flush()

    def trial_ended(
        self,
        trial_id: str,
        state: str,
        summary: Mapping[str, Any],
        reason: str | None = None,
        status: str | None = None,
    ) -> None:
        run_id = self._children.pop(trial_id, None)
        if run_id is None:
            return
        tags = [RunTag(STATE, state)] + [RunTag(k, str(v)) for k, v in summary.items() if k != BEST_VALUE]
        if reason:
            tags.append(RunTag(REASON, reason))
        metrics = self._pending.pop(trial_id, [])  # the epochs not flushed yet go in the same write
        params = self._pending_params.pop(trial_id, [])
        if summary.get(BEST_VALUE) is not None:
            metrics += self._new(trial_id, [Metric(BEST_VALUE, float(summary[BEST_VALUE]), int(time.time() * 1000), 0)])
        self._steps.pop(trial_id, None)
        for i in range(0, max(len(metrics), 1), _BATCH):
            first = i == 0
            self.client.log_batch(
                run_id, metrics=metrics[i : i + _BATCH], tags=tags if first else [], params=params if first else []
            )
        self.client.set_terminated(run_id, status=status or ("FAILED" if state == "failed" else "FINISHED"))

    def flush(self) -> None:
        for trial_id, run_id in self._children.items():
            self._flush_trial(trial_id, run_id)
        self._last_flush = time.monotonic()

    def _flush_trial(self, trial_id: str, run_id: str) -> None:
        """Write a running trial's buffered epochs; while the server is unreachable they stay buffered (the
        next flush, or the trial's end, writes them), so the sweep does not wait on them."""
        pending = self._pending.pop(trial_id, [])
        for i in range(0, len(pending), _BATCH):
            params = self._pending_params.pop(trial_id, [])
            try:
                self.store.client.log_batch(run_id, metrics=pending[i : i + _BATCH], params=params)
            except Exception as exc:
                if not transient(exc):
                    raise
                self._pending[trial_id] = pending[i:] + self._pending.get(trial_id, [])
                if params:
                    self._pending_params[trial_id] = params
                return


def finishing_left(tags: Mapping[str, str]) -> list[str]:
    """The finishing steps (FINISH_STEPS) a parent run still lacks: none before its sweep has ended with a best
    trial; afterwards each step not done, and not one with nothing to do, whether it failed or was cut short."""
    if SWEPT not in tags or BEST_TRIAL not in tags:
        return []
    return [step for step in FINISH_STEPS if not tags.get(FINISH + step, "").startswith(("done", "none"))]


def resume_note(study: str, status: str, tags: Mapping[str, str]) -> str | None:
    """What `hpsearch show` says of a run that `hpsearch run STUDY --resume` completes, or None. A RUNNING run
    gets none: it may be live (the lock says so, not the run)."""
    resume = f"run `hpsearch run {study} --resume`"
    left = finishing_left(tags)
    if status == "RUNNING" or REASON in tags:  # REASON on a parent: a --fresh run replaced it
        return None
    if left:
        return f"finishing incomplete: {', '.join(FINISH_STEPS[step] for step in left)}; {resume}"
    if SWEPT not in tags and status in ("FAILED", "KILLED"):
        why = "stopped by an error" if status == "FAILED" else "interrupted"
        return f"sweep {why}, its trials kept; {resume} to continue it"
    return None


def paged(search: Callable, *args, limit: int | None = None, **kwargs) -> Iterator:
    """Every result of an MLflow search (`client.search_runs`, `search_experiments`, `search_registered_models`,
    `search_model_versions`), PAGE per request, following the page tokens; the first `limit` only, when given.
    The order must end on a unique key (MLflow's order of runs and experiments always does), so that pages
    neither overlap nor leave gaps."""
    token, left = None, limit
    while left is None or left > 0:
        page = search(*args, max_results=PAGE if left is None else min(PAGE, left), page_token=token, **kwargs)
        yield from page
        if left is not None:
            left -= len(page)
        token = page.token
        if not token:
            return


def child_runs(store: Store, experiment_id: str, parent_id: str) -> list:
    """The parent run's child runs (active ones), newest first."""
    from mlflow.entities import ViewType

    return list(
        paged(
            store.client.search_runs,
            [experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
        )
    )


def close_unfinished(store: Store, parent_id: str, reason: str) -> int:
    """End a run that will not be resumed (a --fresh run replaces it): its open trials become failed with
    `reason`, and the run itself KILLED. Returns how many trials were closed."""
    client = store.client
    parent = client.get_run(parent_id)
    closed = 0
    for run in child_runs(store, parent.info.experiment_id, parent_id):
        if run.info.status in ("RUNNING", "KILLED"):
            client.log_batch(run.info.run_id, tags=[RunTag(STATE, "failed"), RunTag(REASON, reason)])
            client.set_terminated(run.info.run_id, status="FAILED")
            closed += 1
    client.set_tag(parent_id, REASON, reason)
    client.set_terminated(parent_id, status="KILLED")
    return closed


def log_values(
    store: Store,
    run_id: str,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, Any] | None = None,
    client=None,
) -> None:
    """Metrics (at step 0) and tags on one run, in one write (through `client` if given)."""
    now = int(time.time() * 1000)
    (client or store.client).log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )


def _param(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
