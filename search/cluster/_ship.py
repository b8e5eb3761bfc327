"""A sweep on a Ray cluster: what travels to the nodes (the user's project, as Ray's runtime_env) and what
is checked on them before anything is recorded (resources a trial needs, the storage and the data root)."""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import uuid
from pathlib import Path

from studies import UserError

# Never shipped with the project: environments, caches, checkpoints and data (gitignore syntax, relative to
# the project folder; Ray also honours the project's own .gitignore).
EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.safetensors",
    "hpsearch-runs",
    "mlruns",
    "*.journal",
]
PROBE_S = 120.0  # how long each node has to start a worker and answer the storage and data check
VERSIONED = ("hpsearch", "torch", "ray", "optuna", "mlflow")  # what every node and driver must agree on


def versions() -> dict[str, str]:
    """This environment's versions of hpsearch and the libraries a sweep's machines must share (read from
    the installed metadata: nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in VERSIONED:
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "unknown"
    return found


def project_env(trainable, local_paths: list[Path]) -> dict | None:
    """The runtime_env that carries a user's trainable to every node: the folder `hpsearch run` started in,
    as Ray's `working_dir`, when the trainable's code is in it (a built-in trainable, or one installed in
    the environment, needs nothing). `local_paths` (the data directory, the data root, the storage) are
    excluded where they are inside it."""
    try:
        source = Path(inspect.getsourcefile(trainable.code or trainable.train) or "").resolve()
    except TypeError:
        return None
    project = Path.cwd().resolve()
    if project not in source.parents or "site-packages" in source.parts:
        return None
    excludes = list(EXCLUDES)
    for path in local_paths:
        try:
            inside = Path(path).resolve().relative_to(project)
        except ValueError:
            continue
        if inside.parts:
            excludes.append(f"/{inside.as_posix()}/")
    return {"working_dir": str(project), "excludes": excludes}


def _probe(paths: dict[str, str]) -> dict:
    """On one node: which of the driver's paths it sees (`marker`: a file the driver just wrote)."""
    import ray

    seen = {}
    for name, path in paths.items():
        seen[name] = os.path.exists(path) and os.access(path, os.R_OK)
    return {"host": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "seen": seen}


def _fmt(resources: dict) -> str:
    shown = {"CPU": 0.0, "GPU": 0.0, **{k: v for k, v in resources.items() if k not in _NOT_SHOWN and ":" not in k}}
    return ", ".join(f"{v:g} {k}" for k, v in shown.items())


_NOT_SHOWN = {"memory", "object_store_memory"}


@contextlib.contextmanager
def storage_marker(root: Path):
    """A file the driver writes in the study state's folder (deleted after): a node that sees it sees the
    storage."""
    marker = root / "control" / f".probe-{uuid.uuid4().hex}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(socket.gethostname())
    try:
        yield marker
    finally:
        marker.unlink(missing_ok=True)


def ask_every_node(nodes: list[dict], function, *args, timeout: float = PROBE_S) -> dict:
    """`function(*args)` run once on each of `nodes` (entries of ray.nodes()), by a zero-CPU task pinned there
    with NodeAffinitySchedulingStrategy: {node id: its answer, or the exception it raised}, for the nodes that
    answered within `timeout`."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(function)
    refs = {
        n["NodeID"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            *args
        )
        for n in nodes
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    answers = {}
    for node, ref in refs.items():
        if ref in ready:
            try:
                answers[node] = ray.get(ref)
            except Exception as exc:
                answers[node] = exc
    return answers


def check_cluster(plan) -> str:
    """Refuse (UserError) a sweep the cluster cannot run: a trial's resources that no node has, a storage
    or a data root that some node does not see. Returns the line that says which cluster it joined."""
    import ray

    spec = plan.spec
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    need = {"CPU": spec.resources.cpus, "GPU": spec.resources.gpus}
    fits = [n for n in nodes if all(n["Resources"].get(k, 0.0) >= v for k, v in need.items() if v > 0)]
    where = plan.address or os.environ.get("RAY_ADDRESS", "auto")
    if not fits:
        have = "; ".join(f"{n['NodeManagerAddress']} ({n['NodeID'][:8]}): {_fmt(n['Resources'])}" for n in nodes)
        raise UserError(
            f"resources: a trial needs {need['CPU']:g} CPU and {need['GPU']:g} GPU on one node, and no node of "
            f"the cluster at {where} has that; it has: {have}"
        )
    total = ray.cluster_resources()
    line = (
        f"ray: joined the cluster at {where}: {len(nodes)} node(s), {total.get('CPU', 0):g} CPU, "
        f"{total.get('GPU', 0):g} GPU"
    )
    paths = {"data_root": str(plan.inputs["data_root"])} if plan.inputs.get("data_root") else {}
    with storage_marker(plan.state_root) as marker:
        answers = ask_every_node(nodes, _probe, {"storage": str(marker), **paths})
    for node, answer in answers.items():
        if isinstance(answer, Exception):
            first = next(iter(str(answer).strip().splitlines()), type(answer).__name__)
            raise UserError(f"node {node[:8]} could not run the storage check: {first[:300]}")
        name = f"node {answer['ip']} ({node[:8]}, host {answer['host']})"
        if not answer["seen"]["storage"]:
            raise UserError(
                f"--storage: {plan.state_root} is not visible from {name}: on a cluster of {len(nodes)} node(s) the "
                "storage must be a path that every node mounts at the same place (NFS, a shared volume)"
            )
        if "data_root" in paths and not answer["seen"]["data_root"]:
            raise UserError(
                f"data_root: {paths['data_root']} cannot be read on {name}: put the data set there "
                "(the same path on every node) or on shared storage"
            )
    silent = len(nodes) - len(answers)
    if silent:
        line += f" ({silent} node(s) did not answer the storage check within {PROBE_S:.0f} s)"
    return line
