"""The study's best checkpoint, its servable MLflow model, and the Model Registry.

`tracking` receives built models and tensors; it never imports `trainables`.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from ._store import Store

CHECKPOINT_ARTIFACT = "checkpoint/best_checkpoint.pt"
MODEL_NAME = "model"


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A digest of a state_dict's names, dtypes, shapes and values: the key of the test-metric cache."""
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def log_best_checkpoint(store: Store, run_id: str, payload: dict[str, Any]) -> None:
    """Save {"model": state_dict, "config": ..., ...} so that torch.load(weights_only=True) reads it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(CHECKPOINT_ARTIFACT).name
        torch.save(payload, path)
        store.client.log_artifact(run_id, str(path), str(Path(CHECKPOINT_ARTIFACT).parent))


def load_best_checkpoint(store: Store, run_id: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        local = store.client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, tmp)
        return torch.load(local, map_location="cpu", weights_only=True)


def log_servable_model(store: Store, run_id: str, model: torch.nn.Module, example: np.ndarray) -> str:
    """Log a pickle-free MLflow model (torch.export "pt2") that predicts from raw inputs; returns its URI."""
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
        logging.getLogger("mlflow.tracking._model_registry.fluent").setLevel(logging.WARNING)
        version = mlflow.register_model(model_uri, name, tags=dict(tags))
        client.update_model_version(name, version.version, description=description)
    client.set_registered_model_alias(name, alias, version.version)
    return {"name": name, "version": int(version.version), "alias": alias, "model_uri": f"models:/{name}@{alias}"}


def load_model(store: Store, model_uri: str):
    """A pyfunc model: `.predict(np.ndarray)` on raw inputs."""
    store.use()
    return mlflow.pyfunc.load_model(model_uri)
