"""Writing a study's runs: one parent run per `hpsearch run`, one child run per trial.

All writes happen in the driver process (Ray workers never touch MLflow), so the sqlite default has one
writer and never sees "database is locked". Per-epoch metrics are buffered and written with log_batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from ._store import Store

# Tag names: the contract between the writer here and the readers in _query.py.
KIND = "hpsearch.kind"  # "study" on a parent run, "trial" on a child run
STUDY = "hpsearch.study"
TRIAL_ID = "hpsearch.trial_id"
STATE = "hpsearch.state"  # completed | pruned | failed | running
REASON = "hpsearch.reason"  # why a trial failed or stopped itself
EPOCHS = "hpsearch.epochs"
BEST_EPOCH = "hpsearch.best_epoch"
METRIC = "hpsearch.metric"
MODE = "hpsearch.mode"
MODEL_URI = "hpsearch.model_uri"
BEST_TRIAL = "hpsearch.best_trial"
CHECKPOINT_DIGEST = "hpsearch.checkpoint_sha256"
TEST_DIGEST = "hpsearch.test_checkpoint_sha256"
OPTUNA_STUDY = "hpsearch.optuna_study"  # the Optuna study (in optuna/STUDY.journal) of this invocation
RAY_EXPERIMENT = "hpsearch.ray_experiment"  # Ray Tune's experiment folder of this invocation
TRIAL_DIR = "hpsearch.trial_dir"  # where Ray keeps the trial's stdout, stderr, error.txt and checkpoint
PARAMS = "hpsearch.params"  # the trial's exact config as JSON (params are strings; this keeps types)
BEST_VALUE = "best_value"  # a metric on child runs (the trial's best) and the parent (the study's best)

_BATCH = 1000  # MLflow's log_batch limit on metrics per call
_FLUSH_EVERY_S = 5.0  # so a live `results` sees recent epochs without a write per epoch


class StudyRecorder:
    """The driver's handle on one study invocation's MLflow records."""

    def __init__(self, store: Store, study: str, tags: Mapping[str, str]):
        self.store = store
        self.study = study
        self.tags = dict(tags)  # provenance carried by every run
        self.parent_id: str | None = None
        self._children: dict[str, str] = {}  # trial_id -> run_id
        self._pending: dict[str, list[Metric]] = {}
        self._last_flush = time.monotonic()

    # ---- parent ----
    def start(self, params: Mapping[str, Any], spec_text: str, run_name: str) -> str:
        client = self.store.client
        exp = self.store.experiment_id(self.study, create=True)
        tags = {**self.tags, KIND: "study", STUDY: self.study, MLFLOW_RUN_NAME: run_name}
        run = client.create_run(exp, tags=tags, run_name=run_name)
        self.parent_id = run.info.run_id
        client.log_batch(self.parent_id, params=[Param(k, _param(v)) for k, v in params.items()])
        client.log_text(self.parent_id, spec_text, "study.yaml")
        return self.parent_id

    def set_parent_tags(self, tags: Mapping[str, Any]) -> None:
        self.store.client.log_batch(self.parent_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_parent_metrics(self, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        self.store.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        for trial_id in list(self._children):  # trials Ray never finished (e.g. Ctrl-C)
            self.trial_ended(trial_id, "failed", {}, reason="interrupted", status="KILLED")
        self.store.client.set_terminated(self.parent_id, status=status)

    # ---- children ----
    def trial_started(self, trial_id: str, params: Mapping[str, Any], trial_dir: str | None = None) -> None:
        if trial_id in self._children:  # a retried trial keeps its one child run
            return
        exp = self.store.experiment_id(self.study)
        tags = {**self.tags, KIND: "trial", STUDY: self.study, TRIAL_ID: trial_id, STATE: "running",
                PARAMS: json.dumps(dict(params), sort_keys=True), TRIAL_DIR: trial_dir or "",
                MLFLOW_PARENT_RUN_ID: self.parent_id, MLFLOW_RUN_NAME: trial_id}  # fmt: skip
        run = self.store.client.create_run(exp, tags=tags, run_name=trial_id)
        self._children[trial_id] = run.info.run_id
        self.store.client.log_batch(run.info.run_id, params=[Param(k, _param(v)) for k, v in params.items()])

    def trial_result(self, trial_id: str, step: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        self._pending.setdefault(trial_id, []).extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush > _FLUSH_EVERY_S:
            self.flush()

    def trial_ended(
        self, trial_id: str, state: str, summary: Mapping[str, Any], reason: str | None = None,
        status: str | None = None,
    ) -> None:  # fmt: skip
        run_id = self._children.pop(trial_id, None)
        if run_id is None:
            return
        self._flush_trial(trial_id, run_id)
        tags = [RunTag(STATE, state)] + [RunTag(k, str(v)) for k, v in summary.items() if k != BEST_VALUE]
        if reason:
            tags.append(RunTag(REASON, reason))
        metrics = []
        if summary.get(BEST_VALUE) is not None:
            metrics.append(Metric(BEST_VALUE, float(summary[BEST_VALUE]), int(time.time() * 1000), 0))
        self.store.client.log_batch(run_id, metrics=metrics, tags=tags)
        self.store.client.set_terminated(run_id, status=status or ("FAILED" if state == "failed" else "FINISHED"))

    def flush(self) -> None:
        for trial_id, run_id in self._children.items():
            self._flush_trial(trial_id, run_id)
        self._last_flush = time.monotonic()

    def _flush_trial(self, trial_id: str, run_id: str) -> None:
        pending = self._pending.pop(trial_id, [])
        for i in range(0, len(pending), _BATCH):
            self.store.client.log_batch(run_id, metrics=pending[i : i + _BATCH])


def _param(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
