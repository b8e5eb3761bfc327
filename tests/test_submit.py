"""Submit and leave, for real: `hpsearch submit` sends a sweep's driver to a 2-node Ray cluster (its own token,
its job server) as a Ray Job and exits; `show`, `logs` and `stop` follow it from a fresh process on "another
machine" (its own working directory and empty HPSEARCH_HOME); a driver killed -9 inside its job is continued
by `submit --resume`. Also: `run` joins a Ray cluster already running on this machine instead of starting one.
The tracking store is an MLflow server on PostgreSQL and the storage a shared directory, as a team has them."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, run_cli, write_study
from tests.services import _kill_group, free_port
from tests.userproject import make_project, study_spec


def spec(name, **fields):
    return study_spec(name, trainable="userpkg.model:train", **fields)


@pytest.fixture(scope="module")
def site(tmp_path_factory, mlflow_pg, ray2):
    """The team's config (the cluster, the tracking server, the shared storage) and two machines: A, where
    the project is and sweeps are submitted from, and B, anywhere else with the config."""
    root = tmp_path_factory.mktemp("submit")
    storage = root / "shared"
    storage.mkdir()
    config = root / "hpsearch.yaml"
    config.write_text(f"address: {ray2.address}\ntracking_uri: {mlflow_pg.uri}\nstorage: {storage}\n")
    project = root / "a" / "project"
    make_project(project)
    elsewhere = root / "b"
    elsewhere.mkdir()
    env = {**ray2.env, "HPSEARCH_CONFIG": str(config), "RAY_API_SERVER_ADDRESS": ray2.dashboard_address}
    return {
        "storage": storage,
        "client": MlflowClient(mlflow_pg.uri, mlflow_pg.uri),
        "project": project,
        "a": {**env, "HPSEARCH_HOME": str(root / "a" / "home")},
        "b": (elsewhere, {**env, "HPSEARCH_HOME": str(root / "b" / "home")}),
    }


def write(project: Path, body: dict) -> str:
    (project / f"{body['name']}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return f"{body['name']}.yaml"


def jobs(ray2):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray2.dashboard_address, headers={"Authorization": f"Bearer {ray2.token}"})


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_job(ray2, job_id: str, states: set[str], timeout: float) -> str:
    client = jobs(ray2)
    seen = {}

    def done():
        seen["state"] = str(client.get_job_status(job_id).value)
        return seen["state"] in states

    try:
        wait_until(done, timeout, f"job {job_id} to be {states}")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (it is {seen.get('state')}):\n{client.get_job_logs(job_id)[-4000:]}") from None
    return seen["state"]


def trials(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return [r for r in runs if r.data.tags.get("hpsearch.kind") == "trial"]


def parent(client: MlflowClient, name: str):
    exp = client.get_experiment_by_name(name)
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("hpsearch.kind") == "study"][:1]
    return run


def epochs(client, run) -> int:
    return len(client.get_metric_history(run.info.run_id, "loss"))


def submitted_job(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"as Ray job (\S+) to", result.stdout)
    assert found, result.stdout
    return found.group(1)


def test_submit_refuses_what_a_user_can_get_wrong_before_sending_anything(tmp_path):
    """No cluster needed: each refusal is one line, exit 2, and nothing written."""
    home = tmp_path / "home"
    config = tmp_path / "config.yaml"
    config.write_text("")
    env = {"HPSEARCH_HOME": str(home), "HPSEARCH_CONFIG": str(config), "RAY_API_SERVER_ADDRESS": ""}
    for name in ("HPSEARCH_ADDRESS", "HPSEARCH_TRACKING_URI", "HPSEARCH_STORAGE"):
        env[name] = ""
    good = write_study(
        tmp_path / "q.yaml",
        """\
        name: subref
        trainable: tests.quad:train
        metric: loss
        mode: min
        trials: 2
        space: {x: {type: float, low: -1.0, high: 1.0}}
    """,
    )
    bad = write_study(tmp_path / "bad.yaml", "name: subref\ntrainable: tests.quad:train\ntrials: -1\n")
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    cases = [
        (run_cli("submit", bad, cwd=REPO, env=env), "bad.yaml"),
        (run_cli("submit", good, "--job-server", "http://192.0.2.1:8265", cwd=REPO, env=env), "set a shared storage"),
        (
            run_cli("submit", good, "--job-server", f"http://127.0.0.1:{dead}", cwd=REPO, env=env),
            f"job server: nothing answers at http://127.0.0.1:{dead}",
        ),
    ]
    for result, words in cases:
        assert result.returncode == 2, result.stdout + result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, result.stderr
        assert result.stdout == ""
    assert not (home / "control").exists()


def test_submit_and_leave_then_show_logs_and_stop_from_another_machine(site, ray2):
    project, env, client = site["project"], site["a"], site["client"]
    other, env_b = site["b"]
    name = write(project, spec("sub-stop", trials=3, max_concurrent=2, fixed={"epochs": 300, "sleep": 0.5}))
    started = time.monotonic()
    result = run_cli("submit", name, cwd=project, env=env)
    took = time.monotonic() - started
    job_id = submitted_job(result)
    assert "hpsearch show sub-stop" in result.stdout and "hpsearch logs sub-stop" in result.stdout
    assert "hpsearch stop sub-stop" in result.stdout
    assert str(jobs(ray2).get_job_status(job_id).value) in ("PENDING", "RUNNING")  # the submitter has left
    record = json.loads((site["storage"] / "control" / "sub-stop.job").read_text())
    assert record["job_id"] == job_id and record["job_server"] == ray2.dashboard_address
    print(f"submit returned in {took:.1f} s")

    wait_until(lambda: any(epochs(client, r) >= 2 for r in trials(client, "sub-stop")), 240, "a trial's epochs")
    shown = run_cli("show", "sub-stop", cwd=other, env=env_b)
    assert shown.returncode == 0, shown.stderr
    assert f"job {job_id} (submitted" in shown.stdout and "): RUNNING" in shown.stdout, shown.stdout
    assert "trials:" in shown.stdout
    as_json = run_cli("show", "sub-stop", "--format", "json", cwd=other, env=env_b)
    assert json.loads(as_json.stdout)["job"]["state"] == "RUNNING"
    logs = run_cli("logs", "sub-stop", cwd=other, env=env_b)
    assert logs.returncode == 0, logs.stderr
    assert "study sub-stop: 3 trials of userpkg.model:train" in logs.stdout, logs.stdout
    assert "ray: joined the cluster at " in logs.stdout and "2 node(s)" in logs.stdout

    again = run_cli("submit", name, cwd=project, env=env)
    assert again.returncode == 2, again.stdout + again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "is already running" in again.stderr, again.stderr
    assert re.search(r"pid \d+ on ", again.stderr) or job_id in again.stderr

    stopped = run_cli("stop", "sub-stop", cwd=other, env=env_b)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_for_job(ray2, job_id, {"SUCCEEDED", "FAILED", "STOPPED"}, 240) == "SUCCEEDED"
    study = parent(client, "sub-stop")
    assert study.info.status == "FINISHED"
    assert study.data.tags.get("hpsearch.best_trial")
    assert "best_checkpoint.pt" in [
        a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(study.info.run_id, "checkpoint")
    ]
    runs = trials(client, "sub-stop")
    assert all(r.info.status != "RUNNING" for r in runs)
    assert "stopped" in {r.data.tags.get("hpsearch.state") for r in runs}
    finished = run_cli("show", "sub-stop", cwd=other, env=env_b)
    assert "): SUCCEEDED" in finished.stdout, finished.stdout


def test_a_driver_killed_inside_its_job_shows_failed_and_submit_resume_continues_it(site, ray2):
    project, env, client = site["project"], site["a"], site["client"]
    other, env_b = site["b"]
    # Trials of 11 s: MLflow shows a trial's epochs up to 5 s late (the recorder writes in batches), and the
    # kill must still find the sweep running.
    name = write(project, spec("sub-kill", trials=4, max_concurrent=2, fixed={"epochs": 14, "sleep": 0.8}))
    job_id = submitted_job(run_cli("submit", name, cwd=project, env=env))
    wait_until(
        lambda: (
            any(r.info.status == "FINISHED" for r in trials(client, "sub-kill"))
            and any(epochs(client, r) >= 3 for r in trials(client, "sub-kill") if r.info.status == "RUNNING")
        ),
        240,
        "a finished trial and one midway",
    )
    time.sleep(1)  # Ray snapshots its experiment state right after each checkpoint
    (lock,) = (site["storage"] / "control").glob("sub-kill.lock.*")
    holder = json.loads(lock.read_text())
    os.kill(int(holder["pid"]), signal.SIGKILL)  # the job's driver, on the head
    assert wait_for_job(ray2, job_id, {"SUCCEEDED", "FAILED", "STOPPED"}, 120) == "FAILED"
    before = {r.data.tags["hpsearch.trial_id"] for r in trials(client, "sub-kill")}

    shown = run_cli("show", "sub-kill", cwd=other, env=env_b)
    assert shown.returncode == 0, shown.stderr
    assert "): FAILED" in shown.stdout and "  | " in shown.stdout, shown.stdout
    assert "hpsearch submit sub-kill --resume" in shown.stdout

    resumed = run_cli("submit", name, "--resume", cwd=project, env=env)
    second = submitted_job(resumed)
    assert second != job_id
    assert wait_for_job(ray2, second, {"SUCCEEDED", "FAILED", "STOPPED"}, 300) == "SUCCEEDED"
    assert "resuming run" in run_cli("logs", "sub-kill", cwd=other, env=env_b).stdout
    runs = trials(client, "sub-kill")
    ids = [r.data.tags["hpsearch.trial_id"] for r in runs]
    assert len(ids) == len(set(ids)) and before <= set(ids)  # every trial once
    assert all(r.info.status != "RUNNING" for r in runs)
    lost = [r for r in runs if r.data.tags.get("hpsearch.reason", "").startswith("lost in a crash")]
    assert len(runs) - len(lost) == 4
    assert {r.data.tags["hpsearch.state"] for r in runs if r not in lost} == {"completed"}
    assert parent(client, "sub-kill").info.status == "FINISHED"


def _raylets(marker: str) -> set[int]:
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "raylet" in text.split(" ", 1)[0] and marker in text:
            found.add(int(cmdline.parent.name))
    return found


def test_run_joins_a_ray_cluster_already_running_on_this_machine(tmp_path):
    """A head started with Ray's own `ray start --head` (in a private RAY_TMPDIR, so no other test or user
    joins it): `run` with no address joins it, says so first, and starts no Ray of its own."""
    import secrets

    private = Path(tempfile.mkdtemp(prefix="hpw", dir="/tmp"))  # short: Ray's socket paths
    token = secrets.token_hex(32)
    ray_env = {
        "RAY_TMPDIR": str(private),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    ray = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--block",
            "--port",
            str(free_port()),
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env={**os.environ, **ray_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        address_file = private / "ray" / "ray_current_cluster"
        wait_until(lambda: address_file.is_file() and _raylets(str(private)), 120, "the head")
        heads = _raylets(str(private))
        config = tmp_path / "config.yaml"
        config.write_text("")
        env = {
            **ray_env,
            "HPSEARCH_HOME": str(tmp_path / "home"),
            "HPSEARCH_CONFIG": str(config),
            "HPSEARCH_ADDRESS": "",
            "RAY_ADDRESS": "",
        }
        study = write_study(
            tmp_path / "warm.yaml",
            """\
            name: warm-join
            trainable: tests.quad:train
            metric: loss
            mode: min
            trials: 3
            max_concurrent: 2
            asha: off
            fixed: {epochs: 3, sleep: 0.5}
            space: {x: {type: float, low: -1.0, high: 1.0}}
        """,
        )
        exe = Path(sys.executable).parent / "hpsearch"
        # Its output goes to files, not pipes: nobody reads while it runs, and a full pipe would stall it.
        with open(tmp_path / "out.txt", "w") as out_file, open(tmp_path / "err.txt", "w") as err_file:
            run = subprocess.Popen(
                [str(exe), "run", str(study)],
                env={**os.environ, **env},
                cwd=Path(__file__).parent.parent,
                stdout=out_file,
                stderr=err_file,
                text=True,
            )
            seen = set()
            while run.poll() is None:  # every raylet under the private temp dir while the run runs
                seen |= _raylets(str(private))
                time.sleep(0.3)
        out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
        assert run.returncode == 0, out + err
        assert out.splitlines()[0].startswith(f"ray: joined the local cluster at {address_file.read_text().strip()}")
        assert seen == heads, (seen, heads)  # no raylet of its own
        nodes = subprocess.run(
            [sys.executable, "-c", "import ray; ray.init(address='auto'); print(len(ray.nodes()))"],
            env={**os.environ, **ray_env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert nodes.stdout.strip().splitlines()[-1] == "1", nodes.stdout + nodes.stderr
    finally:
        _kill_group(head, grace=5)
        import shutil

        shutil.rmtree(private, ignore_errors=True)


def test_a_stale_cluster_file_is_not_joined_and_costs_no_wait(tmp_path, monkeypatch):
    """/tmp/ray/ray_current_cluster left behind by a cluster that is gone (a reboot, kill -9): `run` starts
    its own Ray at once instead of waiting for minutes in ray.init."""
    from search.scheduling import _ray_start

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert _ray_start.running_local_cluster() is None  # no file
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}\n")
    started = time.monotonic()
    assert _ray_start.running_local_cluster() is None
    assert time.monotonic() - started < 2
