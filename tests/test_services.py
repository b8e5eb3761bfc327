"""The real services the multi-machine tests run on (tests/services.py): PostgreSQL, MLflow on it, a Ray cluster."""

import urllib.error
import urllib.request
import uuid

import pytest

_PLACE = """
import json, sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False)

@ray.remote(num_cpus=0)
def where():
    return ray.get_runtime_context().get_node_id()

print("WHERE=" + json.dumps({
    "head": ray.get(where.options(resources={"hp_head": 0.001}).remote()),
    "worker": ray.get(where.options(resources={"hp_worker": 0.001}).remote()),
}))
"""


def _client(server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


def test_mlflow_server_on_postgres_records_experiments_and_runs(mlflow_pg, pg):
    import psycopg

    client = _client(mlflow_pg)
    name = f"services-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name)
    run = client.create_run(experiment_id, run_name="one")
    client.log_param(run.info.run_id, "lr", "0.01")
    client.log_metric(run.info.run_id, "val_loss", 0.25, step=3)
    client.set_terminated(run.info.run_id)

    got = client.get_run(run.info.run_id)
    assert got.info.experiment_id == experiment_id and got.info.status == "FINISHED"
    assert got.data.params == {"lr": "0.01"} and got.data.metrics == {"val_loss": 0.25}
    assert [r.info.run_id for r in client.search_runs([experiment_id])] == [run.info.run_id]
    # The rows are in PostgreSQL, not in a file store of the server's own.
    with psycopg.connect(pg.uri_for("mlflow").replace("postgresql+psycopg", "postgresql")) as conn:
        rows = conn.execute("SELECT run_uuid FROM runs WHERE experiment_id = %s", (int(experiment_id),)).fetchall()
    assert rows == [(run.info.run_id,)]


def test_mlflow_server_stop_and_start_keeps_the_data_and_the_port(mlflow_pg):
    client = _client(mlflow_pg)
    experiment_id = client.create_experiment(f"restart-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "acc", 0.5)
    uri = mlflow_pg.uri
    mlflow_pg.stop()
    try:
        assert not mlflow_pg.running
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"{uri}/health", timeout=5)
    finally:
        mlflow_pg.start()
    assert mlflow_pg.uri == uri
    assert _client(mlflow_pg).get_run(run_id).data.metrics == {"acc": 0.5}


def test_ray_task_placed_by_custom_resource_runs_on_the_worker_node(ray2):
    # The live worker: tests before this one may have killed a worker and started its replacement.
    head, worker = ray2.nodes[0], next(n for n in ray2.workers if n.alive)
    assert head.node_id and worker.node_id and head.node_id != worker.node_id
    assert set(ray2.node_ids()) >= {head.node_id, worker.node_id}

    result = ray2.driver(_PLACE, ray2.address)
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("WHERE="))
    import json

    assert json.loads(line[len("WHERE=") :]) == {"head": head.node_id, "worker": worker.node_id}


def test_ray_cluster_needs_its_own_token(ray2):
    """The head's dashboard (the job server) answers only with the cluster's token."""
    url = f"{ray2.dashboard_address}/api/version"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url, timeout=10)
    assert missing.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ray2.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
