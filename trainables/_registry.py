"""Trainables by name, and a user's own by import path (`pkg.module:function`)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclasses.dataclass(frozen=True)
class Trainable:
    """A model/dataset pair the engine can sweep.

    Only `train` is required. The optional hooks let the engine do the after-search work (revalidate,
    test once, export a servable model) without knowing anything about the model or its data.
    """

    name: str
    train: Callable[[dict, Any], None]  # train(config, reporter)
    metric: str | None = None  # the default study metric, e.g. "val_accuracy"
    mode: str | None = None  # "max" or "min"
    # hyperparameter -> one line saying what it is and its unit; also the names a study may search
    hyperparameters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # evaluate(config, model_state, split) -> metrics on "val" or "test", same code as training's validation
    evaluate: Callable[[dict, dict, str], dict[str, float]] | None = None
    # export(config, model_state) -> (nn.Module taking raw inputs, numpy input example of batch > 1)
    export: Callable[[dict, dict], tuple[Any, Any]] | None = None
    # data_info(config) -> {"fingerprint": str, "split_seed": int, ...} for provenance tags
    data_info: Callable[[dict], dict[str, Any]] | None = None
    # samples(config, split) -> (raw inputs as export's model takes them, labels, image shape or None):
    # what `hpsearch report` draws its confusion matrix and sample predictions from (the "val" split); labels None:
    # a generative model, its inputs (noise) whose outputs, images of that shape, the report draws as a grid
    samples: Callable[[dict, str], tuple[Any, Any, tuple[int, ...] | None]] | None = None
    # setup(config) -> trainables.Setup (model factory, splits, loss, optimizer): what `hpsearch check` runs on
    setup: Callable[[dict], Any] | None = None
    description: str = ""
    # the metrics `train` reports each epoch, what a study may select on: a study naming another is refused
    # before it runs (each of its trials would fail). Empty: not declared, any name is taken.
    reports: tuple[str, ...] = ()
    # the user's own code (their model function) where `train` is the factory's: its file says which project
    # to ship to a cluster's nodes and whose git commit to record. None: `train`'s own.
    code: Callable | None = None
    # classification, segmentation, regression, reconstruction or custom (from_model's); None: a plain train
    task: str | None = None
    # whether a config's trainables.FOLD_KEY trains and validates on a cross-validation fold (from_model's do)
    can_fold: bool = False
    # predict(config, model_state, split="val") -> trainables.Held: raw outputs on the config's val split (its
    # fold's held-out part, folded), with targets and positions; "test" only for an ensemble's one test evaluation
    predict: Callable[..., Any] | None = None
    # folds(config, k) -> trainables.fold_plan's record of the fold layout, without training
    folds: Callable[[dict, int], dict[str, Any]] | None = None


_REGISTRY: dict[str, Trainable] = {}


def register(trainable: Trainable) -> Trainable:
    """Add a trainable under its name. A duplicate name is refused rather than silently replaced."""
    if trainable.name in _REGISTRY and _REGISTRY[trainable.name] is not trainable:
        raise ValueError(f"a trainable named {trainable.name!r} is already registered")
    _REGISTRY[trainable.name] = trainable
    return trainable


def list_trainables() -> list[Trainable]:
    _load_builtins()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def is_import_path(ref: str) -> bool:
    return bool(_IMPORT_PATH.match(ref))


def get_trainable(ref: str) -> Trainable:
    """A registered name, or `pkg.module:attr` naming a `Trainable` or a plain `train(config, reporter)`.

    Raises LookupError with a message fit to show a user.
    """
    _load_builtins()
    if ref in _REGISTRY:
        return _REGISTRY[ref]
    if not is_import_path(ref):
        known = ", ".join(sorted(_REGISTRY))
        raise LookupError(f"unknown trainable {ref!r}; known: {known} (or use an import path pkg.module:function)")
    module_name, attr = ref.split(":")
    # From the folder hpsearch was started in, whichever command asks (run, check, report, promote's
    # retraining): each finding it its own way is how `promote --candidates` once could not.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"cannot import {module_name!r} for trainable {ref!r}: {exc}") from None
    obj = getattr(module, attr, None)
    if isinstance(obj, Trainable):
        return obj
    if callable(obj):
        return Trainable(name=ref, train=obj)
    raise LookupError(f"{ref!r}: module {module_name!r} has no callable {attr!r}")


def _load_builtins() -> None:
    # Importing the modules registers them; done lazily so `import trainables` stays cheap.
    from . import _dcgan, _digits_pairs, _multi, _vision  # noqa: F401
