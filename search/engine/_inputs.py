"""What a study hands its trials besides hyperparameters: where the data is, and a pretrained encoder.

Resolved once, before anything is written, so a missing data set or an unknown `encoder_from` study is a
one-line error (exit 2) rather than a sweep of failed trials. Every location ends up absolute: Ray runs each
trial in a folder of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tracking
from studies import StudySpec, UserError
from tracking import Store, data_home
from tracking import tags as T
from trainables import Trainable, get_trainable


def study_trainable(spec: StudySpec, source: str) -> tuple[Trainable, str, str]:
    """The study's trainable (a name, or an import path from the folder hpsearch started in), checked against
    the study: hyperparameters it declares, the metric it reports. Returns (trainable, metric, mode). Raises
    UserError: what `run` and `check` refuse before anything runs."""
    try:
        trainable = get_trainable(spec.trainable)
    except LookupError as exc:
        raise UserError(f"{source}: trainable: {exc}") from None
    known = set(trainable.hyperparameters)
    unknown = sorted((set(spec.space) | set(spec.fixed)) - known) if known else []
    if unknown:
        raise UserError(
            f"{source}: space/fixed: {', '.join(unknown)} not hyperparameters of {trainable.name}; "
            f"known: {', '.join(sorted(known))}"
        )
    metric, mode = spec.metric or trainable.metric, spec.mode or trainable.mode
    if not metric or not mode:
        raise UserError(f"{source}: metric/mode: required, since trainable {trainable.name} declares no default")
    if trainable.reports and metric not in trainable.reports:  # each trial would fail on it
        raise UserError(
            f"{source}: metric: {trainable.name} does not report {metric!r}; it reports {', '.join(trainable.reports)}"
        )
    return trainable, metric, mode


def trial_inputs(
    spec: StudySpec, trainable: Trainable, source: str, tracking_uri: str | None, shared: Path | None = None
) -> dict[str, Any]:
    """The config values the engine sets for every trial: data_root/download (for trainables that read data
    from disk) and encoder_checkpoint (from `encoder_from`). Checks the data set is there. Raises UserError.
    `shared`: the folder every node sees (the study state's, on the shared storage when there is one), where
    the default data root and the encoder checkpoints go."""
    shared = shared or data_home()
    known = trainable.hyperparameters
    inputs: dict[str, Any] = {}
    if "data_root" in known:
        root = Path(spec.data_root).expanduser() if spec.data_root else shared / "data"
        inputs.update(data_root=str(root.resolve()), download=spec.download)
    elif spec.data_root or spec.download:
        raise UserError(f"{source}: data_root/download: trainable {trainable.name} reads no data set from disk")
    if spec.encoder_from:
        if "encoder_checkpoint" not in known:
            raise UserError(f"{source}: encoder_from: trainable {trainable.name} takes no pretrained encoder")
        inputs["encoder_checkpoint"] = _encoder_checkpoint(spec.encoder_from, source, tracking_uri, shared)
    if trainable.data_info is not None:
        try:
            trainable.data_info({**spec.fixed, "split_seed": spec.split_seed, **inputs})
        except (OSError, ValueError) as exc:  # DatasetMissing is a FileNotFoundError; one line each
            raise UserError(f"{source}: data: {exc}") from None
    return inputs


def _encoder_checkpoint(ref: str, source: str, tracking_uri: str | None, shared: Path) -> str:
    """A checkpoint file as given, or the best checkpoint of study `ref`'s latest finished run, saved under
    `shared`/encoders (named by its digest, so a later sweep of `ref` does not change this one's)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return str(path.resolve())
    if "/" in ref or path.suffix:
        raise UserError(f"{source}: encoder_from: {ref}: no such checkpoint file")
    store = Store(tracking_uri)
    done = [r for r in tracking.parent_runs(store, ref) if T.CHECKPOINT_DIGEST in r.data.tags]
    if not done:
        raise UserError(f"{source}: encoder_from: study {ref!r} has no best checkpoint yet; run it first")
    run = done[0]
    target = shared / "encoders" / f"{ref}-{run.data.tags[T.CHECKPOINT_DIGEST][:16]}.pt"
    if not target.exists():
        import torch

        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(tracking.load_best_checkpoint(store, run.info.run_id), target)
    return str(target)
