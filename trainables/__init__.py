"""Model/dataset pairs and the training loop. Imports torch, never ray or mlflow."""

from studies.words import EPOCH, STOP_DIVERGED, STOP_EARLY, STOP_KEY, TRAIN_SECONDS

from ._check import Setup
from ._ensemble import Ensemble, Selection, combine, greedy_select
from ._factory import from_model
from ._folds import FOLD_KEY, fold_plan
from ._held import Held, can_score, held_score
from ._loop import Split
from ._lru import release_caches
from ._registry import Trainable, get_trainable, is_import_path, list_trainables, register
from ._reporter import MemoryReporter, Reporter

__all__ = [
    "EPOCH",
    "FOLD_KEY",
    "Ensemble",
    "Held",
    "STOP_DIVERGED",
    "STOP_EARLY",
    "STOP_KEY",
    "TRAIN_SECONDS",
    "Setup",
    "Split",
    "MemoryReporter",
    "Reporter",
    "Selection",
    "Trainable",
    "can_score",
    "combine",
    "fold_plan",
    "from_model",
    "get_trainable",
    "greedy_select",
    "held_score",
    "is_import_path",
    "list_trainables",
    "register",
    "release_caches",
]
