"""Model/dataset pairs and the training loop. Imports torch, never ray or mlflow."""

from ._check import Setup
from ._factory import from_model
from ._loop import Split
from ._lru import release_caches
from ._registry import Trainable, get_trainable, is_import_path, list_trainables, register
from ._reporter import EPOCH, STOP_DIVERGED, STOP_EARLY, STOP_KEY, TRAIN_SECONDS, MemoryReporter, Reporter

__all__ = [
    "EPOCH",
    "STOP_DIVERGED",
    "STOP_EARLY",
    "STOP_KEY",
    "TRAIN_SECONDS",
    "Setup",
    "Split",
    "MemoryReporter",
    "Reporter",
    "Trainable",
    "from_model",
    "get_trainable",
    "is_import_path",
    "list_trainables",
    "register",
    "release_caches",
]
