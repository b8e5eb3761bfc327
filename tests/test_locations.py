"""Where a team's sweeps live (flags, environment, config file), refusals of dead locations, and the study
lock that every machine sharing the storage sees: real files, real processes, no Ray."""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.cluster import _studylock
from search.cluster._locations import resolve
from studies import UserError
from tests.conftest import run_cli, write_study


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("HPSEARCH_ADDRESS", "HPSEARCH_TRACKING_URI", "HPSEARCH_STORAGE", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HPSEARCH_CONFIG", str(tmp_path / "config.yaml"))
    (tmp_path / "config.yaml").write_text("")
    return tmp_path / "config.yaml"


def test_flag_beats_environment_beats_config_file(clean_env, monkeypatch, tmp_path):
    clean_env.write_text(f"address: 10.0.0.1:6379\ntracking_uri: http://tracking:5000\nstorage: {tmp_path}/shared\n")
    loc = resolve()
    assert (loc.address, loc.tracking_uri, loc.storage) == (
        "10.0.0.1:6379",
        "http://tracking:5000",
        f"{tmp_path}/shared",
    )
    assert loc.origin("storage") == f"{clean_env}: storage"
    monkeypatch.setenv("HPSEARCH_TRACKING_URI", "http://env:5000")
    assert resolve().tracking_uri == "http://env:5000" and resolve().origin("tracking_uri") == "HPSEARCH_TRACKING_URI"
    assert resolve(tracking_uri="http://flag:5000").tracking_uri == "http://flag:5000"
    assert resolve().state_root(tmp_path / "home") == tmp_path / "shared"
    assert resolve().experiments(tmp_path / "home") == str(tmp_path / "shared")


def test_defaults_are_the_data_directory(clean_env, tmp_path):
    loc = resolve()
    assert (loc.address, loc.tracking_uri, loc.storage) == (None, None, None)
    assert loc.state_root(tmp_path / "home") == tmp_path / "home"
    assert loc.experiments(tmp_path / "home") == str(tmp_path / "home" / "ray")


@pytest.mark.parametrize(
    "text, message",
    [
        ("adress: x:1\n", "adress: not a setting; known: address, tracking_uri, storage"),
        ("storage: [1, 2]\n", "storage: must be a non-empty string"),
        ("- a\n", "must be a mapping"),
        ("address: [unclosed\n", "cannot read it as YAML"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file_and_field(clean_env, text, message):
    clean_env.write_text(text)
    with pytest.raises(UserError, match="config.yaml") as err:
        resolve()
    assert message in str(err.value)


def test_object_storage_cannot_hold_the_study_state(clean_env, tmp_path):
    with pytest.raises(UserError, match="s3:// storage is not supported"):
        resolve(storage="s3://bucket/sweeps").state_root(tmp_path)


def test_cli_refuses_dead_locations_fast_with_one_line_and_writes_nothing(clean_env, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "home"
    env = {"HPSEARCH_HOME": str(home), "HPSEARCH_CONFIG": str(clean_env)}
    study = write_study(
        tmp_path / "q.yaml",
        """\
        name: deadloc
        trainable: tests.quad:train
        metric: loss
        mode: min
        trials: 2
        space: {x: {type: float, low: -1.0, high: 1.0}}
    """,
    )
    started = time.monotonic()
    dead_tracking = run_cli("results", "deadloc", "--tracking-uri", f"http://127.0.0.1:{port}", env=env, timeout=120)
    dead_database = run_cli(
        "models", "--tracking-uri", f"postgresql+psycopg://u:secret@127.0.0.1:{port}/db", env=env, timeout=120
    )
    dead_address = run_cli("run", study, "--address", f"127.0.0.1:{port}", env=env, timeout=120)
    env_address = run_cli("run", study, env={**env, "HPSEARCH_ADDRESS": f"127.0.0.1:{port}"}, timeout=120)
    clean_env.write_text(f"tracking_uri: http://127.0.0.1:{port}\n")  # the team's config: the same refusal
    via_config = run_cli("run", study, env=env, timeout=120)
    assert time.monotonic() - started < 90
    assert "secret" not in dead_database.stderr and "u:***@127.0.0.1" in dead_database.stderr
    for result, words in (
        (dead_tracking, "did not answer within 5 s"),
        (dead_address, "--address: no Ray cluster answers"),
        (env_address, "HPSEARCH_ADDRESS: no Ray cluster answers"),  # named where the user set it
        (via_config, "did not answer within 5 s"),
        (dead_database, "did not answer within 5 s"),
    ):
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, result.stderr
    assert not home.exists()


def test_stop_with_no_sweep_running_says_where_it_looked(clean_env, tmp_path):
    result = run_cli(
        "stop", "nothing", env={"HPSEARCH_HOME": str(tmp_path / "home"), "HPSEARCH_CONFIG": str(clean_env)}
    )
    assert result.returncode == 2
    assert f"no sweep of study 'nothing' is running in the data directory {tmp_path / 'home'}" in result.stderr


# ---- the lock ----


def _take(root, barrier, results):
    barrier.wait()
    try:
        lock = _studylock.StudyLock(root, "race").acquire()
    except UserError as exc:
        results.put(("lost", str(exc)))
        return
    results.put(("won", os.getpid()))
    time.sleep(2)
    lock.release()


def test_two_machines_racing_for_a_stale_lock_cannot_both_win(tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    # A crashed holder on another machine: its heartbeat is two minutes old.
    (control / "race.lock.3").write_text(
        json.dumps({"pid": 1, "host": "elsewhere", "started": 0, "heartbeat": time.time() - 120})
    )
    ctx = multiprocessing.get_context("fork")
    for _ in range(3):
        barrier, results = ctx.Barrier(4), ctx.Queue()
        racers = [ctx.Process(target=_take, args=(tmp_path, barrier, results)) for _ in range(4)]
        for p in racers:
            p.start()
        outcomes = [results.get(timeout=30) for _ in racers]
        for p in racers:
            p.join(timeout=30)
        assert sorted(o[0] for o in outcomes) == ["lost", "lost", "lost", "won"], outcomes
        winner = next(o[1] for o in outcomes if o[0] == "won")
        assert all(f"pid {winner} on {socket.gethostname()}" in o[1] for o in outcomes if o[0] == "lost")
        assert not list(control.glob("race.lock.*"))  # the winner released its generation; older ones are gone
        (control / "race.lock.3").write_text(json.dumps({"pid": 1, "host": "elsewhere", "heartbeat": 0}))


def test_a_live_lock_is_refused_and_only_its_holder_releases_it(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from search.cluster._studylock import StudyLock\n"
                f"StudyLock(Path({str(tmp_path)!r}), 'held').acquire(); print('held', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        info = _studylock.read_lock(tmp_path, "held")
        assert info["pid"] == holder.pid
        with pytest.raises(UserError, match=f"already running: pid {holder.pid} on {socket.gethostname()}"):
            _studylock.StudyLock(tmp_path, "held").acquire()
        _studylock.StudyLock(tmp_path, "held").release()  # never acquired: releases nothing
        assert _studylock.read_lock(tmp_path, "held")["pid"] == holder.pid
        holder.send_signal(signal.SIGKILL)  # the holder dies: on its own host a dead pid frees the lock at once
        holder.wait(timeout=10)
        mine = _studylock.StudyLock(tmp_path, "held").acquire()
        assert _studylock.read_lock(tmp_path, "held")["pid"] == os.getpid() and mine.held()
        mine.release()
        assert _studylock.read_lock(tmp_path, "held") is None
    finally:
        holder.kill()


def test_output_cut_short_by_a_closed_pipe_is_not_an_error(clean_env, tmp_path):
    """`hpsearch trainables | head -0`: the reader is gone before the first line; the command ends quietly."""
    exe = Path(sys.executable).parent / "hpsearch"
    proc = subprocess.Popen(
        [str(exe), "trainables"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HPSEARCH_HOME": str(tmp_path / "home")},
    )
    proc.stdout.close()  # before the command has printed anything (its imports take seconds)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()


def test_a_sqlite_tracking_uri_keeps_its_artifacts_beside_the_database(tmp_path, monkeypatch):
    """MLflow would put them in ./mlruns of whatever folder the command runs in (a repository, say)."""
    import tracking

    monkeypatch.chdir(tmp_path)
    store = tracking.Store(f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}")
    run = store.client.create_run(store.experiment_id("arts", create=True))
    (tmp_path / "note.txt").write_text("x")
    store.client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    assert list((tmp_path / "db" / "artifacts" / "arts").rglob("note.txt"))
    assert not (tmp_path / "mlruns").exists()
