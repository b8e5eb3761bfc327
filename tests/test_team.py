"""A team on real machines: a login-protected MLflow server (`--app-name basic-auth`, on PostgreSQL), the
suite's 2-node Ray cluster named by a config file that holds the token's path (never the token), a shared
storage. A wrong or missing login is one line; no secret reaches anything printed, logged or recorded; a job
is followed to its end; two teammates' studies share the cluster."""

import json
import os
import re
import secrets
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli, spawn_cli
from tests.userproject import make_project
from tests.userproject import study_spec as spec

USER = "alice"


@pytest.fixture(scope="module")
def team(tmp_path_factory, mlflow_auth, ray2):
    """The team's config file (the cluster, its token's path, the login-protected server, the storage) and
    machines that use it: A (the project, with alice's login) and C (anywhere else, the same login)."""
    root = tmp_path_factory.mktemp("team")
    storage = root / "shared"
    storage.mkdir()
    token_file = root / "a" / "ray-token"
    token_file.parent.mkdir()
    token_file.write_text(ray2.token + "\n")
    token_file.chmod(0o600)
    config = root / "hpsearch.yaml"
    config.write_text(
        f"address: {ray2.address}\ntracking_uri: {mlflow_auth.uri}\nstorage: {storage}\nray_token_file: {token_file}\n"
    )
    password = secrets.token_urlsafe(12)
    mlflow_auth.create_user(USER, password)
    project = make_project(root / "a" / "project")
    login = {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": password}
    elsewhere = root / "c"
    elsewhere.mkdir()
    base = {"HPSEARCH_CONFIG": str(config), "RAY_API_SERVER_ADDRESS": ray2.dashboard_address}
    return {
        "root": root,
        "storage": storage,
        "config": config,
        "password": password,
        "token": ray2.token,
        "project": project,
        "a": {**base, **login, "HPSEARCH_HOME": str(root / "a" / "home")},
        "c": (elsewhere, {**base, **login, "HPSEARCH_HOME": str(root / "c" / "home")}),
        "server": mlflow_auth,
    }


def write(project: Path, body: dict) -> str:
    (project / f"{body['name']}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return f"{body['name']}.yaml"


def client_as_admin(server, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin[1])
    return MlflowClient(server.uri, server.uri)


def jobs(ray2):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray2.dashboard_address, headers={"Authorization": f"Bearer {ray2.token}"})


def wait_for_job(ray2, job_id: str, timeout: float) -> str:
    client, deadline = jobs(ray2), time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = str(client.get_job_status(job_id).value)
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            return state
        time.sleep(1)
    raise AssertionError(f"job {job_id} still running after {timeout:.0f} s:\n{client.get_job_logs(job_id)[-3000:]}")


def submitted_job(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"as Ray job (\S+) to", result.stdout)
    assert found, result.stdout
    return found.group(1)


def test_a_missing_or_wrong_login_is_one_line_naming_the_server_and_what_to_set(team, tmp_path):
    project, storage = team["project"], team["storage"]
    name = write(project, spec("login-refused", trials=2, fixed={"epochs": 2}))
    home = tmp_path / "home"
    no_login = {**team["a"], "HPSEARCH_HOME": str(home), "MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""}
    wrong = {**no_login, "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": "not-" + team["password"]}
    before = sorted(storage.rglob("*"))
    commands = [
        ("run", name),
        ("submit", name),
        ("results", "login-refused"),
        ("show", name),
        ("studies",),
        ("models",),
        ("report", "login-refused"),
    ]
    for env, words in ((no_login, "asks for a login (HTTP 401) and none is set"), (wrong, "refused the login")):
        for args in commands:
            done = run_cli(*args, cwd=project, env=env, timeout=120)
            assert done.returncode == 2, (args, done.stdout, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
            line = done.stderr.strip()
            assert line.startswith("hpsearch: error: tracking server " + team["server"].uri), (args, line)
            assert words in line and "MLFLOW_TRACKING_USERNAME" in line and "MLFLOW_TRACKING_PASSWORD" in line
            assert team["password"] not in done.stdout + done.stderr
    assert not home.exists()  # nothing written: no data directory, no lock, no job record
    assert sorted(storage.rglob("*")) == before


def _reader(proc) -> list[str]:
    """The lines a spawned command prints, collected by a thread as they come."""
    import threading

    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return lines


def _wait_for_line(lines: list[str], words: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(words in line for line in lines):
        assert time.monotonic() < deadline, f"no {words!r} within {timeout:.0f} s:\n{''.join(lines)[-3000:]}"
        time.sleep(0.3)


def _files_holding(folders, needles: tuple[str, ...]) -> list[str]:
    found = []
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found += [f"{path}: {n[:4]}..." for n in needles if n.encode() in data]
    return found


def doctor(cwd, env, *args):
    """`hpsearch doctor`: (the finished process, {check: [(status, line), ...]})."""
    done = run_cli("doctor", *args, cwd=cwd, env=env, timeout=300)
    found: dict[str, list] = {}
    for line in done.stdout.splitlines():
        parsed = re.match(r"\[\s*(ok|warn|FAIL)\] ([a-z ]+): (.*)", line)
        if parsed:
            found.setdefault(parsed.group(2), []).append((parsed.group(1), parsed.group(3)))
    return done, found


def failed(found: dict) -> set[str]:
    return {check for check, lines in found.items() if any(status == "FAIL" for status, _ in lines)}


def test_doctor_passes_on_the_team_setup_and_names_each_thing_broken_one_at_a_time(team, ray2, tmp_path):
    from tests.services import can_unshare_mount

    other, env = team["c"]
    done, found = doctor(other, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(found) == {"ray", "versions", "clock", "storage", "hpsearch", "tracking", "job server"}, done.stdout
    assert not failed(found) and "2 node(s) alive" in found["ray"][0][1], done.stdout
    assert "token from the file " in found["ray"][0][1] and "took a write" in found["tracking"][0][1]
    assert team["password"] not in done.stdout + done.stderr and team["token"] not in done.stdout + done.stderr

    wrong = tmp_path / "wrong-token"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    config = tmp_path / "wrong-token.yaml"
    config.write_text(team["config"].read_text().replace(str(team["root"] / "a" / "ray-token"), str(wrong)))
    done, found = doctor(other, {**env, "HPSEARCH_CONFIG": str(config)})
    assert done.returncode == 1 and "ray" in failed(found) and "tracking" not in failed(found), done.stdout
    assert "token" in found["ray"][0][1], found["ray"]

    team["server"].stop()
    try:
        done, found = doctor(other, env)
        assert done.returncode == 1 and failed(found) == {"tracking"}, done.stdout
        assert f"tracking store {team['server'].uri} did not answer" in found["tracking"][0][1]
    finally:
        team["server"].start()

    fake = tmp_path / "elsewhere-site" / "hpsearch-9.9.9.dist-info"  # another hpsearch, first on that node's path
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: hpsearch\nVersion: 9.9.9\n")
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    broken = [({"env": {"PYTHONPATH": path}}, "versions")]
    ahead = tmp_path / "clock-ahead"  # a machine whose clock is 30 s ahead, as its Python processes see it
    ahead.mkdir()
    (ahead / "sitecustomize.py").write_text("import time\n_now = time.time\ntime.time = lambda: _now() + 30.0\n")
    broken.append(({"env": {"PYTHONPATH": os.pathsep.join([str(ahead), os.environ.get("PYTHONPATH", "")])}}, "clock"))
    if can_unshare_mount():
        broken.append(({"hide": (team["storage"],)}, "storage"))  # a machine that does not mount the storage
    for how, check in broken:
        node = ray2.add_node(**how)
        try:
            done, found = doctor(other, env)
            assert done.returncode == 1 and failed(found) == {check}, done.stdout
            (line,) = [line for status, line in found[check] if status == "FAIL"]
            assert node.node_id[:8] in line, line
            assert check != "versions" or "hpsearch 9.9.9 (here 0.1.0)" in line, line
            assert check != "clock" or re.search(r"clock is (2[0-9]|30)\.\d s ahead", line), line
        finally:
            ray2.kill_node(node.index)
            node.replaced = True  # gone for good: `restore()` does not bring this machine back


def _epoch_spans(client, name: str) -> dict[str, tuple[int, int]]:
    """{trial id: (first, last) time its epochs were recorded, ms}, for a study's trials."""
    exp = client.get_experiment_by_name(name)
    spans = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        if run.data.tags.get("hpsearch.kind") == "trial":
            times = [m.timestamp for m in client.get_metric_history(run.info.run_id, "loss")]
            spans[run.data.tags["hpsearch.trial_id"]] = (min(times), max(times))
    return spans


def test_two_teammates_studies_run_on_one_cluster_at_once(team, ray2, monkeypatch):
    """Alice and Bob (each a login of their own, each a project of their own) submit different studies at the
    same time: both finish with every trial once, each in its own experiment, each within its own
    max_concurrent and neither waiting for the other; a third machine lists both; a second submit of a
    running study is refused. `logs --follow` from the third machine stops at Ctrl-C and leaves the job
    running."""
    project, alice = team["project"], team["a"]
    other, env_c = team["c"]
    bob_password = secrets.token_urlsafe(12)
    team["server"].create_user("bob", bob_password)
    bob_project = make_project(team["root"] / "b" / "project")
    bob = {**alice, "HPSEARCH_HOME": str(team["root"] / "b" / "home")}
    bob.update(MLFLOW_TRACKING_USERNAME="bob", MLFLOW_TRACKING_PASSWORD=bob_password)
    # Trials of about 8 s each: long beside the seconds a busy head takes to start a job's driver and a trial.
    fields = dict(trials=2, max_concurrent=1, fixed={"epochs": 12, "sleep": 0.7})
    job_a = submitted_job(run_cli("submit", write(project, spec("pair-a", **fields)), cwd=project, env=alice))
    job_b = submitted_job(run_cli("submit", write(bob_project, spec("pair-b", **fields)), cwd=bob_project, env=bob))

    again = run_cli("submit", "pair-a.yaml", cwd=project, env=alice)
    assert again.returncode == 2 and "is already running" in again.stderr, again.stdout + again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    follower = spawn_cli("logs", "pair-a", "--follow", cwd=other, env=env_c)  # from a third machine
    lines = _reader(follower)
    _wait_for_line(lines, "ray: joined the cluster", 240)
    follower.send_signal(signal.SIGINT)  # Ctrl-C: stops the following, not the job
    assert follower.wait(timeout=30) == 0, "".join(lines)
    assert f"stopped following; job {job_a} goes on" in "".join(lines), "".join(lines)
    assert str(jobs(ray2).get_job_status(job_a).value) == "RUNNING"

    assert wait_for_job(ray2, job_a, 400) == "SUCCEEDED"
    assert wait_for_job(ray2, job_b, 400) == "SUCCEEDED"
    listed = run_cli("studies", "--format", "json", cwd=other, env=env_c)
    assert listed.returncode == 0, listed.stderr
    runs = {row["study"]: row["runs"] for row in json.loads(listed.stdout)}
    assert runs.get("pair-a") == 1 and runs.get("pair-b") == 1, listed.stdout

    client = client_as_admin(team["server"], monkeypatch)
    spans = {name: _epoch_spans(client, name) for name in ("pair-a", "pair-b")}
    for name, trials in spans.items():
        assert len(trials) == 2, (name, trials)  # every trial once, in the study's own experiment
        ordered = sorted(trials.values())
        assert all(earlier[1] < later[0] for earlier, later in zip(ordered, ordered[1:])), (name, ordered)
    together = [
        (a, b) for a in spans["pair-a"].values() for b in spans["pair-b"].values() if a[0] < b[1] and b[0] < a[1]
    ]
    assert together, spans  # some trial of each ran at the same time: neither study waited for the other


def test_the_readme_team_walkthrough_and_submit_run_verbatim(team, ray2, tmp_path, monkeypatch):
    """README, "Beyond one machine": a teammate's config file (the `team-config` block, where the README
    says to put it), the token's copy at ~/.ray/auth_token, a login in the environment, and then the
    `team-walkthrough` and `team-submit` blocks run verbatim in bash from a project folder holding
    my-study.yaml. Only the placeholders of the suite's cluster are swapped: HEAD:6379, TRACKING:5000 and
    /shared/sweeps for the fixtures' addresses (their ports are free ones) and storage; the job server is
    named by Ray's RAY_API_SERVER_ADDRESS, since the fixture's dashboard is not on port 8265. Against the
    login-protected server: afterwards no secret is anywhere (`_no_secret_anywhere`)."""
    import subprocess
    import sys

    from tests.test_readme import _command

    home = tmp_path / "teammate"  # HOME: the config and the token's copy go where the README puts them
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(ray2.token)
    (home / ".ray" / "auth_token").chmod(0o600)
    config = home / ".config" / "hpsearch" / "config.yaml"
    config.parent.mkdir(parents=True)
    text = _command("team-config", "yaml")
    swaps = {"HEAD:6379": ray2.address, "http://TRACKING:5000": team["server"].uri, "/shared/sweeps": team["storage"]}
    for placeholder, value in swaps.items():
        assert placeholder in text, placeholder
        text = text.replace(placeholder, str(value))
    config.write_text(text)
    project = make_project(tmp_path / "project")
    write(project, spec("my-study", trials=2, max_concurrent=2, fixed={"epochs": 3}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPSEARCH_", "RAY_", "MLFLOW_TRACKING_"))}
    env.update(HOME=str(home), RAY_API_SERVER_ADDRESS=ray2.dashboard_address)
    env.update(MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=team["password"])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    out, errors = {}, []
    for marker in ("team-walkthrough", "team-submit"):
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _command(marker)],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, (marker, done.stdout[-4000:], done.stderr[-4000:])
        out[marker] = done.stdout
        errors.append(done.stderr)
    walk, submitted = out["team-walkthrough"], out["team-submit"]
    assert "doctor: the setup works from this machine" in walk and "[FAIL]" not in walk, walk[:3000]
    assert "ray: joined the cluster at " in walk and "2 node(s)" in walk
    assert "study my-study finished" in walk and "promoted my-study version 1 as @champion" in walk
    assert "submitted study my-study as Ray job " in submitted and "ended: SUCCEEDED <==" in submitted
    assert "): SUCCEEDED" in submitted, submitted[-2000:]  # `show`'s first line: the job's state
    job_id = re.search(r"as Ray job (\S+) to", submitted).group(1)
    assert not list((team["storage"] / "control").glob(".my-study.login"))  # the driver took it and deleted it
    # A head whose `ray start` had no hpsearch on its PATH: the job's entrypoint says so in one line.
    entrypoint = json.loads((team["storage"] / "control" / "my-study.job").read_text())["entrypoint"]
    bare = subprocess.run(["sh", "-c", entrypoint], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert bare.returncode == 127 and bare.stderr.startswith("hpsearch: error: the head has no `hpsearch`"), bare
    # The teammate's own files too (the config, ~/.mlflow), less the token's copy the README puts in ~/.ray.
    folders = [project, *(p for p in home.iterdir() if p.name != ".ray")]
    _no_secret_anywhere(team, ray2, [*out.values(), *errors], job_id, folders, monkeypatch)


def _no_secret_anywhere(team, ray2, printed: list[str], job_id: str, folders: list, monkeypatch) -> None:
    """The login's password and the cluster's token are in none of: what the commands printed; the job's
    output, entrypoint, runtime_env and metadata; every MLflow param and tag of the study; every file on the
    storage and in `folders` (data directories, the report); and (the password) Ray's own logs on the head."""
    needles = (team["password"], team["token"])
    info = jobs(ray2).get_job_info(job_id)
    shown = [info.entrypoint, json.dumps(info.runtime_env), json.dumps(info.metadata), jobs(ray2).get_job_logs(job_id)]
    client = client_as_admin(team["server"], monkeypatch)
    runs = client.search_runs([client.get_experiment_by_name("my-study").experiment_id], max_results=1000)
    shown += [json.dumps([r.data.params, r.data.tags]) for r in runs]
    leaks = [f"text {i}: {n[:4]}..." for i, text in enumerate(printed + shown) for n in needles if n in text]
    leaks += _files_holding([team["storage"], *folders], needles)
    leaks += _files_holding([ray2.root], (team["password"],))  # what Ray's agents log of the job
    assert len(runs) >= 6 and list(Path(folders[0]).rglob("*.html")), runs  # two runs of 2 trials; a report
    assert not leaks, leaks


def test_the_config_names_the_token_file_and_never_holds_the_token(tmp_path, monkeypatch, cli):
    """No cluster needed: a token pasted into the (shareable) config file is refused without being echoed,
    a path that is no file is named; a good one points Ray at it (RAY_AUTH_TOKEN_PATH, RAY_AUTH_MODE)."""
    from search.cluster._locations import use_token_file

    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "HPSEARCH_STORAGE"):
        monkeypatch.setenv(name, "")  # recorded, so what use_token_file sets is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    config = tmp_path / "config.yaml"
    monkeypatch.setenv("HPSEARCH_CONFIG", str(config))
    token = secrets.token_hex(32)
    config.write_text(f"ray_token_file: {token}\n")
    code, out, err = cli("show", "some-study")
    assert code == 2 and "ray_token_file: this looks like a token itself" in err and token not in out + err, err
    config.write_text(f"ray_token_file: {tmp_path / 'nowhere'}\n")
    code, out, err = cli("logs", "some-study")
    assert code == 2 and f"{tmp_path / 'nowhere'} is not a file" in err, err
    assert not (tmp_path / "home").exists()
    (tmp_path / "token").write_text(token)
    config.write_text(f"ray_token_file: {tmp_path / 'token'}\n")
    assert use_token_file() == str(tmp_path / "token")
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "token") and os.environ["RAY_AUTH_MODE"] == "token"
    code, _, err = cli("submit", "digits-cnn", "--address", "http://127.0.0.1:8265", "--job-server", "http://x:1")
    assert code == 2 and "names the job server, and so does --job-server" in err, err
    code, _, err = cli("logs", "some-study", "some-trial", "--follow")
    assert code == 2 and "--follow: follows the submitted job's driver" in err, err
