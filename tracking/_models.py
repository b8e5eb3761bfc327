"""The study's best checkpoint, its servable MLflow model, and the Model Registry.

`tracking` receives built models and tensors; it never imports `trainables`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from . import _runs
from ._store import Store
from .tags import ENSEMBLE, MODEL_KIND, SINGLE

if TYPE_CHECKING:  # torch only where a checkpoint or a model is handled: the query commands never load it
    import numpy as np
    import torch

CHECKPOINT_ARTIFACT = "checkpoint/best_checkpoint.pt"
MODEL_NAME = "model"
HELD_OUT = ("held_out_single", "held_out_ensemble")  # the two held-out values an ensemble was chosen on


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A digest of a state_dict's names, dtypes, shapes and values: the key of the test-metric cache."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # reshape(-1): a channels_last 1x1 conv weight counts as contiguous yet keeps a last stride above 1
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def log_best_checkpoint(store: Store, run_id: str, payload: dict[str, Any]) -> None:
    """Save {"model": state_dict, "config": ..., ...} so that torch.load(weights_only=True) reads it."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(CHECKPOINT_ARTIFACT).name
        torch.save(payload, path)
        store.client.log_artifact(run_id, str(path), str(Path(CHECKPOINT_ARTIFACT).parent))


def load_best_checkpoint(store: Store, run_id: str) -> dict[str, Any]:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        local = store.client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, tmp)
        return torch.load(local, map_location="cpu", weights_only=True)


def log_servable_model(store: Store, run_id: str, model: torch.nn.Module, example: np.ndarray) -> str:
    """Log a pickle-free MLflow model (torch.export "pt2") that predicts from raw inputs; returns its URI."""
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    model = model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    signature = ModelSignature(
        inputs=Schema([TensorSpec(example.dtype, (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(out.dtype, (-1, *out.shape[1:]))]),
    )
    store.use()
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pytorch.log_model(
            model,
            name=MODEL_NAME,
            signature=signature,
            input_example=example,
            serialization_format="pt2",
            # Explicit requirements: inferring them would start a subprocess and import the world.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        )
    return info.model_uri


def register_model(
    store: Store, model_uri: str, name: str, alias: str, tags: Mapping[str, str], description: str
) -> dict[str, Any]:
    """Register the logged model (never a bare state_dict: MLflow cannot) and point `alias` at it."""
    client = store.client
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description=f"hpsearch: {description}")
    # Promoting the same model again moves the alias; it does not add a duplicate version.
    existing = [v for v in client.search_model_versions(f"name = '{name}'") if v.source == model_uri]
    if existing:
        version = max(existing, key=lambda v: int(v.version))
    else:
        store.use()
        with _without_announcements():
            version = mlflow.register_model(model_uri, name, tags=dict(tags))
        client.update_model_version(name, version.version, description=description)
    previous = _alias_version(client, name, alias)
    if previous is not None and previous != str(version.version):
        # The version the alias leaves keeps an alias of its own, so `hpsearch rollback` can bring it back.
        client.set_registered_model_alias(name, previous_alias(alias), previous)
    client.set_registered_model_alias(name, alias, version.version)
    return {
        "name": name,
        "version": int(version.version),
        "alias": alias,
        "model_uri": f"models:/{name}@{alias}",
        "previous_version": int(previous) if previous and previous != str(version.version) else None,
    }


# What mlflow.register_model prints on stderr as it works, not through logging: "Registered model 'x' already
# exists" (hpsearch creates the name first, with its description), "Successfully registered", "Created version".
_ANNOUNCED = ("Registered model ", "Successfully registered model ", "Created version ")


@contextlib.contextmanager
def _without_announcements():
    """MLflow's own announcements kept off hpsearch's console; anything else it writes (a warning) passes."""
    caught = io.StringIO()
    try:
        with contextlib.redirect_stderr(caught):
            yield
    finally:
        kept = [line for line in caught.getvalue().splitlines(keepends=True) if not line.startswith(_ANNOUNCED)]
        sys.stderr.write("".join(kept))


def previous_alias(alias: str) -> str:
    """Where the version an alias leaves is kept: `previous` for `champion`, `ALIAS-previous` otherwise."""
    return "previous" if alias == "champion" else f"{alias}-previous"


def _alias_version(client, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def rollback(store: Store, name: str, alias: str = "champion") -> dict[str, Any] | None:
    """Swap `alias` and its previous alias; None when the model has no such pair."""
    client = store.client
    current, previous = _alias_version(client, name, alias), _alias_version(client, name, previous_alias(alias))
    if current is None or previous is None:
        return None
    client.set_registered_model_alias(name, alias, previous)
    client.set_registered_model_alias(name, previous_alias(alias), current)
    restored, demoted = (composition(client.get_model_version(name, v).tags or {}) for v in (previous, current))
    return {
        "name": name,
        "alias": alias,
        "version": int(previous),
        "previous_version": int(current),
        "kind": restored["kind"],
        "ensemble_size": restored["ensemble_size"],
        "previous_kind": demoted["kind"],
        "previous_ensemble_size": demoted["ensemble_size"],
    }


def registered_models(store: Store) -> list[dict[str, Any]]:
    """Every version of every registered model: aliases, kind (and an ensemble's members), test metrics and
    lineage from its tags.

    Two paged searches whatever the number of models: the models (for their aliases, which MLflow does not
    promise on versions found by a search) and every version of all of them, not one search per model."""
    if not store.exists():
        return []
    client = store.client
    aliases: dict[tuple[str, str], list[str]] = {}
    for model in _runs.paged(client.search_registered_models, order_by=["name ASC"]):
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault((model.name, str(version)), []).append(alias)
    rows = []
    for version in _runs.paged(client.search_model_versions, order_by=["name ASC", "version_number DESC"]):
        tags = version.tags or {}
        rows.append(
            {
                "name": version.name,
                "version": int(version.version),
                "aliases": sorted(aliases.get((version.name, str(version.version)), [])),
                **composition(tags),
                "study": tags.get("study"),
                "trial_id": tags.get("trial_id"),
                "run_id": tags.get("run_id"),  # the study's parent run it came from
                "val_value": tags.get("val_value"),
                **{k: _number(tags, k) for k in HELD_OUT},
                **{k: float(v) for k, v in tags.items() if k.startswith("test_")},
                "created": version.creation_timestamp,
            }
        )
    return sorted(rows, key=lambda r: (r["name"], -r["version"]))


def composition(tags: Mapping[str, str]) -> dict[str, Any]:
    """A version's `kind` (`single` or `ensemble`; versions registered before ensembles are single), an
    ensemble's `members` (name, trial_id, run_id, seed, fold, weight, checkpoint_sha256 each; None where the
    tag is unreadable) and `ensemble_size` (its distinct members)."""
    if tags.get(MODEL_KIND, SINGLE) != ENSEMBLE:
        return {"kind": SINGLE, "ensemble_size": None, "members": None}
    try:
        members = json.loads(tags.get("members", ""))
    except ValueError:  # a hand-edited tag: the listing still shows the version
        members = None
    size = tags.get("ensemble_size", "")
    return {
        "kind": ENSEMBLE,
        "ensemble_size": int(size) if size.isdigit() else (len(members) if isinstance(members, list) else None),
        "members": members,
    }


def _number(tags: Mapping[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return None


def load_model(store: Store, model_uri: str):
    """A pyfunc model: `.predict(np.ndarray)` on raw inputs."""
    store.use()
    return mlflow.pyfunc.load_model(model_uri)
