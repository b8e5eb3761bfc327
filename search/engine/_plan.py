"""Planning a sweep: the study, the flags, the locations, the data and the study's unfinished run checked
before anything is written. What comes out (a Plan) is what `execute` runs."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import studies
import tracking
from studies import StudySpec, UserError
from tracking import Store, data_home
from tracking import tags as T
from trainables import Trainable

from ..cluster._locations import Locations, resolve
from ..cluster._studylock import read_lock, running_error
from ..sampling._space import grid_size
from ..scheduling import _ray_start
from ._control import check_free_disk
from ._inputs import study_trainable, trial_inputs
from ._warm import warm_points


@dataclasses.dataclass(frozen=True)
class Plan:
    """A validated study, ready to run: nothing has been written yet."""

    spec: StudySpec
    trainable: Trainable
    metric: str
    mode: str
    tracking_uri: str | None
    address: str | None
    storage: str | None
    warm_points: tuple = ()  # configurations enqueued before the sampler's own
    notes: tuple = ()  # messages for the user, printed when the run starts
    resume_run: Any = None  # --resume: the unfinished parent run (an mlflow Run) to continue
    replaces: Any = None  # --fresh: the unfinished parent run that the new one replaces
    inputs: dict = dataclasses.field(default_factory=dict)  # data_root, encoder_checkpoint: set for every trial
    locations: Locations = Locations()  # where the cluster, the tracking store and the storage are
    ship: dict | None = None  # the user's project as Ray's runtime_env, for the nodes of a cluster

    @property
    def state_root(self) -> Path:
        """The study state's folder (Optuna journal, lock, stop requests): on the shared storage if any."""
        return self.locations.state_root(data_home())


def plan(
    study: str,
    tracking_uri: str | None = None,
    address: str | None = None,
    storage: str | None = None,
    warm_start: str | None = None,
    warm_count: int = 5,
    resume: bool = False,
    fresh: bool = False,
    **overrides: Any,
) -> Plan:
    """Load and check a study (a built-in name or a YAML path) and the flags. Raises UserError; writes nothing."""
    if resume and fresh:
        raise UserError("--resume and --fresh: give one (continue the unfinished run, or start a new one)")
    locations = resolve(address, tracking_uri, storage)
    tracking_uri, address = locations.tracking_uri, locations.address
    state_root = locations.state_root(data_home())  # refuses a storage that cannot hold the study's state
    if address is not None:
        # A dead head is refused now, not after minutes in ray.init.
        _ray_start.check_reachable(address, locations.origin("address"))
    spec = studies.with_overrides(studies.load_study(study), **overrides)
    trainable, metric, mode = study_trainable(spec, study)
    _check_gpus(spec, study, address)
    spec, notes = _fit_grid(spec)
    points, warm_notes = _warm_start(spec, warm_start, warm_count, tracking_uri, resume)
    unfinished = _unfinished_to_handle(spec, locations, state_root, resume, fresh)
    inputs = trial_inputs(spec, trainable, study, tracking_uri, state_root)
    check_free_disk(data_home())
    if state_root != data_home():
        check_free_disk(state_root)
    ship = None
    if address is not None or os.environ.get("RAY_ADDRESS"):
        from ..cluster._ship import project_env

        ship = project_env(trainable, [data_home(), state_root, *(Path(v) for v in inputs.values() if v)])
    return Plan(
        spec,
        trainable,
        metric,
        mode,
        tracking_uri,
        address,
        locations.storage,
        tuple(points),
        tuple(notes + warm_notes),
        resume_run=unfinished if resume else None,
        replaces=unfinished if fresh else None,
        inputs=inputs,
        locations=locations,
        ship=ship,
    )


def _check_gpus(spec: StudySpec, source: str, address: str | None) -> None:
    """On this machine alone, a trial cannot ask for more GPUs than it has (on a cluster, the cluster's check)."""
    if spec.resources.gpus > 0 and address is None and not os.environ.get("RAY_ADDRESS"):
        import torch

        available = torch.cuda.device_count()
        if spec.resources.gpus > available:
            raise UserError(
                f"{source}: resources.gpus: {spec.resources.gpus:g} per trial but this machine has {available} GPU(s)"
            )


def _fit_grid(spec: StudySpec) -> tuple[StudySpec, list[str]]:
    """A grid sampler runs at most the grid's points: (the spec with its trials cut to them, the note why)."""
    if spec.sampler != "grid":
        return spec, []
    size = grid_size(spec)
    if spec.trials <= size:
        return spec, []
    note = f"grid sampler: the grid has {size} points, so {size} trials instead of {spec.trials}"
    return spec.model_copy(update={"trials": size}), [note]


def _warm_start(
    spec: StudySpec, warm_start: str | None, warm_count: int, tracking_uri: str | None, resume: bool
) -> tuple[list[dict], list[str]]:
    """--warm-start: (the configurations to enqueue, notes for the user)."""
    if warm_start is None:
        return [], []
    if spec.sampler == "grid":
        raise UserError("--warm-start: not with sampler grid (a grid is fixed)")
    points, notes = warm_points(spec, studies.check_name(warm_start), warm_count, tracking_uri)
    if resume and points:
        raise UserError("--warm-start: not with --resume (the resumed run keeps its own queue)")
    return points, notes


def _unfinished_to_handle(spec: StudySpec, locations: Locations, state_root: Path, resume: bool, fresh: bool):
    """The study's unfinished run, which --resume continues and --fresh replaces; without either, there must
    be none. Raises UserError."""
    tracking_uri = locations.tracking_uri
    unfinished = _unfinished_run(spec.name, tracking_uri, state_root, finishing=resume)
    if resume:
        if unfinished is None:
            raise UserError(f"--resume: study {spec.name!r} has no unfinished run to resume; run it without --resume")
        _check_resumable(spec, unfinished, tracking_uri, locations)
    elif unfinished is not None and not fresh:
        raise UserError(
            f"study {spec.name!r} has an unfinished run {unfinished.info.run_id} ({unfinished.info.run_name}, "
            f"{unfinished.info.status}): continue it with --resume, or start over with --fresh"
        )
    return unfinished


def _unfinished_run(study: str, tracking_uri: str | None, state_root: Path, finishing: bool = False):
    """The study's latest parent run if a crash (RUNNING), Ctrl-C/SIGTERM (KILLED) or an error of the engine
    (FAILED) left it unfinished; with `finishing` (a --resume), also a FINISHED run whose finishing steps are
    incomplete, which a plain run does not wait for. Raises UserError when that run is in fact alive (its lock
    has a fresh heartbeat)."""
    live = read_lock(state_root, study)
    if live is not None:
        raise running_error(study, live)
    runs = tracking.parent_runs(Store(tracking_uri), study, limit=1)
    if not runs:
        return None
    status = runs[0].info.status
    if status in ("RUNNING", "KILLED", "FAILED"):
        return runs[0]
    if finishing and status == "FINISHED" and tracking.finishing_left(runs[0].data.tags):
        return runs[0]
    return None


def _check_resumable(spec: StudySpec, run, tracking_uri: str | None, locations: Locations) -> None:
    tags = run.data.tags
    if tags.get(T.SPEC_DIGEST) != studies.spec_digest(spec):
        store = Store(tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            old = Path(store.client.download_artifacts(run.info.run_id, "study.yaml", tmp)).read_text()
        changes = studies.spec_changes(old, spec) or ["(the spec's hash differs)"]
        raise UserError(f"--resume: the study's spec changed since run {run.info.run_id}: {'; '.join(changes)}")
    experiment = tags.get(T.RAY_EXPERIMENT, "")
    started_in = experiment.rstrip("/").rsplit("/", 1)[0]
    here = locations.experiments(data_home())
    if experiment and started_in != here:
        raise UserError(
            f"--resume: run {run.info.run_id} keeps its state in storage {started_in}, but this command's storage "
            f"is {here} ({locations.origin('storage')}): resume with --storage {started_in}"
        )
    if T.SWEPT in tags:
        return  # the sweep ended: what is left (finishing) needs no state of Ray's
    if "://" not in experiment and not list(Path(experiment).glob("experiment_state-*.json")):
        raise UserError(
            f"--resume: run {run.info.run_id} saved no experiment state under {experiment or '(none)'}; "
            "start over with --fresh"
        )
