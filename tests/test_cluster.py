"""Beyond one machine, for real: a 2-node Ray cluster (separate raylets and object stores), an MLflow server
on PostgreSQL, a shared directory as storage, and a user's project that only the driver's machine has.
The faults are injected for real: the tracking server stopped for 30 s mid-sweep, the driver killed with
-9 and resumed from a "second machine" (its own working directory and empty HPSEARCH_HOME), a worker node
killed mid-sweep. Each test checks what MLflow and Optuna hold afterwards."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import run_cli, spawn_cli
from tests.services import can_unshare_mount
from tests.userproject import make_project
from tests.userproject import study_spec as study


@pytest.fixture(scope="module")
def team(tmp_path_factory, mlflow_pg, ray2):
    """Two "machines" that share the cluster, the tracking server and the storage through one config file
    each: A (the project, where sweeps start) and B (a colleague's clone, its own empty HPSEARCH_HOME)."""
    root = tmp_path_factory.mktemp("team")
    storage = root / "shared"
    storage.mkdir()
    config = root / "hpsearch.yaml"
    config.write_text(f"address: {ray2.address}\ntracking_uri: {mlflow_pg.uri}\nstorage: {storage}\n")
    machines = {}
    for name in ("a", "b"):
        project = make_project(root / name / "project")
        env = {**ray2.env, "HPSEARCH_HOME": str(root / name / "home"), "HPSEARCH_CONFIG": str(config)}
        machines[name] = (project, env)
    return {"storage": storage, "client": MlflowClient(mlflow_pg.uri, mlflow_pg.uri), **machines}


def write(project: Path, spec: dict) -> str:
    path = project / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path.name


def launch(project: Path, env: dict, *args) -> subprocess.Popen:
    return spawn_cli(*args, cwd=project, env=env, stderr=subprocess.PIPE)


def children(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("hpsearch.kind") == "trial"]


def wait_until(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the sweep exited ({proc.returncode}) before {what}:\n{out[-3000:]}\n{err[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def epochs_logged(client, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))


def optuna_trials(storage: Path, name: str, client: MlflowClient):
    (parent,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name(name).experiment_id])
        if r.data.tags.get("hpsearch.kind") == "study"
    ][:1]
    journal = parent.data.tags["hpsearch.optuna_journal"]
    assert Path(journal).is_relative_to(storage)  # the study's Optuna state is on the shared storage
    backend = optuna.storages.journal.JournalFileBackend(journal)
    loaded = optuna.load_study(
        study_name=parent.data.tags["hpsearch.optuna_study"], storage=optuna.storages.JournalStorage(backend)
    )
    return parent, loaded.trials


def test_sweep_on_two_nodes_survives_a_tracking_outage_and_is_read_and_promoted_from_another_machine(
    team, mlflow_pg, ray2
):
    project, env = team["a"]
    client = team["client"]
    name = write(project, study("cl-sweep", trials=4, max_concurrent=2, fixed={"epochs": 6, "sleep": 1.0}))
    proc = launch(project, env, "run", name)
    try:
        wait_until(
            lambda: any(len(epochs_logged(client, r)) >= 1 for r in children(client, "cl-sweep")),
            180,
            "a first epoch in MLflow",
            proc,
        )
        mlflow_pg.stop()  # the tracking server goes away for 30 s while trials run on both nodes
        time.sleep(30)
        mlflow_pg.start()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out + err
    assert "tracking store unreachable" in err and "reachable again" in err, err
    assert f"ray: joined the cluster at {ray2.address}: 2 node(s)" in out, out

    trials = children(client, "cl-sweep")
    assert len(trials) == 4 and {r.data.tags["hpsearch.state"] for r in trials} == {"completed"}
    assert {r.info.status for r in trials} == {"FINISHED"}
    for run in trials:  # every epoch of every trial once: nothing lost in the outage, nothing written twice
        assert epochs_logged(client, run) == [1, 2, 3, 4, 5, 6], run.data.tags["hpsearch.trial_id"]
    nodes = {r.data.tags.get("hpsearch.node") for r in trials}
    assert nodes == {n.node_id for n in ray2.nodes[:2]}, nodes  # trials ran on the head and on the worker
    parent, ot_trials = optuna_trials(team["storage"], "cl-sweep", client)
    assert parent.info.status == "FINISHED"
    assert [t.state for t in ot_trials] == [optuna.trial.TrialState.COMPLETE] * 4

    # Machine B: a clone of the project, its own empty data directory, the same team config.
    other, env_b = team["b"]
    trial_id = trials[0].data.tags["hpsearch.trial_id"]
    logs = run_cli("logs", "cl-sweep", trial_id, cwd=other, env=env_b)
    assert logs.returncode == 0, logs.stderr
    assert "userpkg running from" in logs.stdout and str(team["a"][0]) not in logs.stdout  # the shipped copy ran
    rows = run_cli("results", "cl-sweep", "--format", "json", cwd=other, env=env_b)
    assert rows.returncode == 0, rows.stderr
    assert sorted(r["trial_id"] for r in json.loads(rows.stdout)) == sorted(
        r.data.tags["hpsearch.trial_id"] for r in trials
    )
    report = run_cli("report", "cl-sweep", cwd=other, env=env_b)
    assert report.returncode == 0, report.stderr
    assert "Optuna plots (its journal" not in Path(report.stdout.split("report: ")[1].split(" (")[0]).read_text()
    promoted = run_cli(
        "promote",
        "cl-sweep",
        "--candidates",
        "2",
        "--reseeds",
        "1",
        "--format",
        "json",
        cwd=other,
        env=env_b,
        timeout=600,
    )
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    info = json.loads(promoted.stdout[promoted.stdout.index("{") :])
    assert client.get_model_version_by_alias("cl-sweep", "champion").version == str(info["version"])
    reseeds = [
        r for r in client.search_runs([parent.info.experiment_id]) if r.data.tags.get("hpsearch.kind") == "reseed"
    ]
    assert len(reseeds) == 2 and {r.info.status for r in reseeds} == {"FINISHED"}
    assert not (Path(env_b["HPSEARCH_HOME"]) / "optuna").exists()  # B holds no study state of its own


def test_driver_killed_then_resumed_from_a_second_machine(team, ray2):
    project, env = team["a"]
    client = team["client"]
    # Trials of 11 s: MLflow shows a trial's epochs up to 5 s late (the recorder writes in batches), and the
    # kill must still find one running.
    spec = study("cl-resume", trials=4, max_concurrent=2, fixed={"epochs": 14, "sleep": 0.8})
    name = write(project, spec)
    proc = launch(project, env, "run", name)
    try:
        wait_until(
            lambda: (
                any(r.info.status == "FINISHED" for r in children(client, "cl-resume"))
                and any(
                    len(epochs_logged(client, r)) >= 3
                    for r in children(client, "cl-resume")
                    if r.info.status == "RUNNING"
                )
            ),
            240,
            "a finished trial and one midway",
            proc,
        )
        time.sleep(1)  # Ray snapshots its experiment state right after each checkpoint
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver's machine is gone
        proc.communicate(timeout=60)
    before = {r.data.tags["hpsearch.trial_id"]: r.info.status for r in children(client, "cl-resume")}
    assert "RUNNING" in before.values()

    other, env_b = team["b"]
    write(other, spec)
    elsewhere = team["storage"].parent / "elsewhere"
    wrong = run_cli("run", name, "--resume", "--storage", elsewhere, cwd=other, env=env_b)
    assert wrong.returncode == 2 and "keeps its state in storage" in wrong.stderr, wrong.stderr
    assert not elsewhere.exists()
    resumed = run_cli("run", name, "--resume", cwd=other, env=env_b, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming run" in resumed.stdout

    trials = children(client, "cl-resume")
    ids = [r.data.tags["hpsearch.trial_id"] for r in trials]
    assert len(ids) == len(set(ids)) and set(before) <= set(ids)  # every trial once, none duplicated
    assert all(r.info.status != "RUNNING" for r in trials)
    lost = [r for r in trials if r.data.tags.get("hpsearch.reason", "").startswith("lost in a crash")]
    assert len(trials) - len(lost) == 4  # the full number of trials, besides any the kill lost
    assert {r.data.tags["hpsearch.state"] for r in trials if r not in lost} == {"completed"}
    parent, ot_trials = optuna_trials(team["storage"], "cl-resume", client)
    assert parent.info.status == "FINISHED"
    assert sorted(t.user_attrs["ray_trial_id"] for t in ot_trials) == sorted(ids)  # Optuna and MLflow agree
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in ot_trials)


def test_refusals_before_anything_is_written(team, ray2):
    project, env = team["a"]
    client = team["client"]
    name = write(project, study("cl-refused", trials=2, fixed={"epochs": 2}))
    gpus = run_cli("run", name, "--gpus-per-trial", "1", cwd=project, env=env)
    assert gpus.returncode == 2 and len(gpus.stderr.strip().splitlines()) == 1, gpus.stderr
    assert "no node of the cluster" in gpus.stderr and "0 GPU" in gpus.stderr and "1 CPU" in gpus.stderr
    assert client.get_experiment_by_name("cl-refused") is None


@pytest.mark.skipif(not can_unshare_mount(), reason="needs `unshare --mount` to give a node its own view of a folder")
def test_storage_that_a_node_cannot_see_is_refused(team, ray2):
    project, env = team["a"]
    local = team["storage"].parent / "driver-only"
    local.mkdir()
    node = ray2.add_node(hide=(local,))  # a machine whose filesystem has no such folder shared
    try:
        name = write(project, study("cl-local", trials=2, fixed={"epochs": 2}))
        result = run_cli("run", name, "--storage", local, cwd=project, env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"--storage: {local} is not visible from node" in result.stderr and node.node_id[:8] in result.stderr
        assert team["client"].get_experiment_by_name("cl-local") is None
    finally:
        ray2.kill_node(node.index)
        node.replaced = True  # gone for good: `restore()` does not bring this machine back


def test_a_worker_node_dies_mid_sweep(team, ray2):
    project, env = team["a"]
    client = team["client"]
    head = ray2.nodes[0].node_id
    name = write(
        project, study("cl-nodeloss", trials=3, max_concurrent=2, max_failures=0, fixed={"epochs": 10, "sleep": 1.0})
    )
    proc = launch(project, env, "run", name)
    victim = {}

    def on_a_worker():
        for run in children(client, "cl-nodeloss"):
            node = run.data.tags.get("hpsearch.node")
            if run.info.status == "RUNNING" and node and node != head and len(epochs_logged(client, run)) >= 2:
                victim.update(trial=run.data.tags["hpsearch.trial_id"], node=node)
                return True
        return False

    try:
        wait_until(on_a_worker, 240, "a trial midway on a worker node", proc)
        index = next(n.index for n in ray2.nodes if n.node_id == victim["node"])
        ray2.kill_node(index, wait_dead=False)  # the machine is lost, with its raylet, object store and trial
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        ray2.restore()  # the session's cluster has its two nodes again for later tests
    assert proc.returncode == 0, out + err
    trials = {r.data.tags["hpsearch.trial_id"]: r for r in children(client, "cl-nodeloss")}
    dead = trials[victim["trial"]]
    assert dead.data.tags["hpsearch.state"] == "failed"
    assert dead.data.tags["hpsearch.reason"].startswith(f"node died: node {victim['node'][:8]}"), dead.data.tags
    assert "node died" in out  # the sweep's own line for the trial says so too
    assert all(r.info.status != "RUNNING" for r in trials.values())
    assert sum(r.data.tags["hpsearch.state"] == "completed" for r in trials.values()) == 2  # the sweep went on
    _, ot_trials = optuna_trials(team["storage"], "cl-nodeloss", client)
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in ot_trials)
    assert sum(t.state == optuna.trial.TrialState.FAIL for t in ot_trials) == 1


def test_promotion_by_folds_and_ensemble_runs_on_the_cluster(team, ray2):
    """`promote --candidates 2 --folds 3 --ensemble 3` from the second machine: the fold trainings are Ray tasks
    on both nodes, recorded in the MLflow server on PostgreSQL, and the chosen model is registered there."""
    project, env = team["a"]
    client = team["client"]
    spec = {
        "name": "cl-folds",
        "trainable": "digits-mlp",
        "space": {"lr": {"type": "float", "low": 3.0e-3, "high": 3.0e-2, "log": True}},
        "fixed": {"hidden": 32, "layers": 1},
        "trials": 2,
        "asha": {"max_t": 2, "grace_period": 2},
        "resources": {"cpus": 1},
        "max_concurrent": 2,
    }
    swept = run_cli("run", write(project, spec), cwd=project, env=env, timeout=600)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    other, env_b = team["b"]
    promoted = run_cli(
        "promote",
        "cl-folds",
        "--candidates",
        "2",
        "--folds",
        "3",
        "--ensemble",
        "3",
        "--format",
        "json",
        cwd=other,
        env=env_b,
        timeout=600,
    )
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    info = json.loads(promoted.stdout[promoted.stdout.index("{") :])
    assert info["folds"] == 3 and [len(c["values"]) for c in info["candidates"]] == [3, 3]
    parent = [r for r in client.search_runs([client.get_experiment_by_name("cl-folds").experiment_id])][0]
    runs = [r for r in client.search_runs([parent.info.experiment_id]) if r.data.tags.get("hpsearch.kind") == "fold"]
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    nodes = {r.data.tags["hpsearch.node"] for r in runs}  # on two nodes (an earlier test may have replaced one)
    assert len(nodes) >= 2 and nodes <= {n.node_id for n in ray2.nodes if n.alive}, nodes
    version = client.get_model_version_by_alias("cl-folds", "champion")
    assert version.version == str(info["version"]) and version.tags["model_kind"] == info["kind"]
    assert version.tags["folds"] == "3" and "test_accuracy" in info["test_metrics"]
