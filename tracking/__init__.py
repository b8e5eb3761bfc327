"""Everything MLflow: runs, metrics, artifacts, checkpoints, the registry. The only package importing mlflow."""

from . import tags
from ._models import (
    load_best_checkpoint,
    load_model,
    log_best_checkpoint,
    log_servable_model,
    previous_alias,
    register_model,
    registered_models,
    rollback,
    state_digest,
)
from ._query import cached_test_metrics, parent_runs, recorded_studies, trial_rows
from ._runs import StudyRecorder, child_runs, close_unfinished, finishing_left, log_values, resume_note
from ._store import HOME_ENV, Store, TrackingUnreachable, TrackingUnusable, data_home, redacted
from .tags import ENSEMBLE, MODEL_KIND, SINGLE

__all__ = [
    "ENSEMBLE",
    "MODEL_KIND",
    "SINGLE",
    "HOME_ENV",
    "Store",
    "TrackingUnreachable",
    "TrackingUnusable",
    "StudyRecorder",
    "child_runs",
    "finishing_left",
    "resume_note",
    "cached_test_metrics",
    "close_unfinished",
    "data_home",
    "load_best_checkpoint",
    "load_model",
    "log_best_checkpoint",
    "log_values",
    "log_servable_model",
    "parent_runs",
    "previous_alias",
    "recorded_studies",
    "registered_models",
    "rollback",
    "redacted",
    "register_model",
    "state_digest",
    "tags",
    "trial_rows",
]
