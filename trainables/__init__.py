"""Model/dataset pairs and the training loop. Imports torch, never ray or mlflow."""

from studies.words import EPOCH, STOP_DIVERGED, STOP_EARLY, STOP_KEY, TRAIN_SECONDS

from ._ensemble import Ensemble, Selection, combine, greedy_select
from ._factory import from_model
from ._folds import FOLD_KEY, fold_plan
from ._held import Held, can_score, held_score
from ._loop import Split
from ._lru import release_caches
from ._preflight import FAIL, PASS, WARN, Check, Setup, data_sanity, layer_shapes, lr_range, overfit_one_batch
from ._registry import Trainable, get_trainable, is_import_path, list_trainables, register
from ._reporter import MemoryReporter, Reporter

__all__ = [
    "EPOCH",
    "FAIL",
    "FOLD_KEY",
    "PASS",
    "STOP_DIVERGED",
    "STOP_EARLY",
    "STOP_KEY",
    "TRAIN_SECONDS",
    "WARN",
    "Check",
    "Ensemble",
    "Held",
    "MemoryReporter",
    "Reporter",
    "Selection",
    "Setup",
    "Split",
    "Trainable",
    "can_score",
    "combine",
    "data_sanity",
    "fold_plan",
    "from_model",
    "get_trainable",
    "greedy_select",
    "held_score",
    "is_import_path",
    "layer_shapes",
    "list_trainables",
    "lr_range",
    "overfit_one_batch",
    "register",
    "release_caches",
]
