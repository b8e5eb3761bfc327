"""What a user meets first: the morning's query commands start without torch or Ray, bad input of every kind
is refused in one line with exit 2 and nothing written, and a trial's output stays readable after `--fresh`
replaced its run. Against real stores: a built-in study recorded once by a real `hpsearch run`."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli, spawn_cli, write_study

QUERY = """\
import json, sys
from search.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
print("\\nIMPORTED " + json.dumps([m for m in ("torch", "ray") if m in sys.modules]), file=sys.stderr)
sys.exit(code)
"""


def query(home: Path, *args) -> tuple[int, str, str, list[str]]:
    """One command in a fresh interpreter: (exit code, stdout, stderr without the marker, heavy modules imported)."""
    proc = subprocess.run(
        [sys.executable, "-c", QUERY, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HPSEARCH_HOME": str(home)},
        timeout=300,
    )
    err, _, marker = proc.stderr.rpartition("\nIMPORTED ")
    assert marker, proc.stderr  # the command returned (no traceback before the marker)
    return proc.returncode, proc.stdout, err.strip(), json.loads(marker)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A data directory holding one real sweep of the built-in digits-mlp (one trial), its model promoted."""
    root = tmp_path_factory.mktemp("startup")
    home = root / "home"
    run = run_cli("run", "digits-mlp", "--trials", "1", cwd=root, env={"HPSEARCH_HOME": str(home)})
    assert run.returncode == 0, run.stdout + run.stderr
    rows = json.loads(run_cli("results", "digits-mlp", "--format", "json", env={"HPSEARCH_HOME": str(home)}).stdout)
    shown = json.loads(run_cli("show", "digits-mlp", "--format", "json", env={"HPSEARCH_HOME": str(home)}).stdout)
    return {"root": root, "home": home, "trial": rows[0]["trial_id"], "run_id": shown["run_id"]}


def snapshot(home: Path) -> tuple:
    """What the data directory holds: its files (less sqlite's WAL side files) and the database's content."""
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*") if not p.name.endswith(("-wal", "-shm")))
    db = home / "mlflow.db"
    with sqlite3.connect(db) as con:
        dump = hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
    con.close()
    return files, dump


@pytest.mark.parametrize(
    "args",
    [
        ["results", "digits-mlp"],
        ["results", "digits-mlp", "--format", "json"],
        ["show", "digits-mlp"],
        ["show", "digits-mlp", "--format", "json"],
        ["studies"],
        ["models"],
        ["logs", "digits-mlp", "{trial}"],
        ["logs", "digits-mlp", "{trial}", "--run", "{run_id}"],
        ["promote", "digits-mlp", "--format", "json"],
    ],
    ids=lambda a: " ".join(a),
)
def test_query_commands_import_neither_torch_nor_ray(recorded, args):
    code, out, err, heavy = query(recorded["home"], *[a.format(**recorded) for a in args])
    assert code == 0, out + err
    assert out.strip()
    assert heavy == [], f"`hpsearch {' '.join(args)}` imported {heavy}"


def test_stop_with_no_sweep_refuses_without_torch_or_ray(recorded):
    code, _, err, heavy = query(recorded["home"], "stop", "digits-mlp")
    assert code == 2 and "nothing to stop" in err and len(err.splitlines()) == 1, err
    assert heavy == []


def test_trainables_lists_the_builtins_without_ray(recorded):
    code, out, err, heavy = query(recorded["home"], "trainables", "--format", "json")
    assert code == 0, err
    assert "digits-mlp" in {row["name"] for row in json.loads(out)}
    assert "ray" not in heavy  # the built-in trainables' modules import torch themselves


BAD_YAML = "name: x\ntrainable: digits-mlp\nspace: {lr: {type: float, low: 1\n"
UNKNOWN_KEY = "name: x\ntrainable: digits-mlp\nspace: {lr: {type: float, low: 0.001, high: 0.1}}\nbudget: 3\n"
BAD_SPACE = "name: x\ntrainable: digits-mlp\nspace: {lr: {type: float, low: 0.1, high: 0.001}}\n"
NO_SPACE = "name: x\ntrainable: digits-mlp\nfixed: {lr: 0.01}\ntrials: 2\n"
UNKNOWN_TRAINABLE = "name: x\ntrainable: nope\nspace: {lr: {type: float, low: 0.001, high: 0.1}}\n"
OK = "name: x\ntrainable: digits-mlp\nspace: {lr: {type: float, low: 0.001, high: 0.1}}\n"


@pytest.mark.parametrize(
    "text,expected",
    [
        (BAD_YAML, "YAML syntax error"),
        (UNKNOWN_KEY, "budget: unknown field"),
        (BAD_SPACE, "space.lr: low"),
        (NO_SPACE, "space: empty"),
        (b"name: x\xff\n", "not UTF-8"),
    ],
    ids=["yaml", "unknown-key", "bad-space", "no-space", "not-utf8"],
)
def test_a_malformed_study_is_refused_before_torch_and_ray_load(tmp_path, text, expected):
    study = tmp_path / "study.yaml"
    study.write_bytes(text if isinstance(text, bytes) else text.encode())
    home = tmp_path / "home"
    code, _, err, heavy = query(home, "run", study)
    assert code == 2 and expected in err and len(err.splitlines()) == 1, err
    assert heavy == []
    assert not home.exists()


def test_the_hpsearch_process_reports_a_malformed_study_before_it_starts_ray(tmp_path):
    """As `hpsearch run` itself (main() with no argv), which starts Ray in the background for a valid study."""
    study = write_study(tmp_path / "study.yaml", UNKNOWN_KEY)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "search.cli", "run", str(study)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HPSEARCH_HOME": str(tmp_path / "home")},
        timeout=300,
    )
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    message = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and len(message) == 1 and "budget: unknown field" in message[0], proc.stderr[-2000:]
    assert "torch" not in imported and "ray" not in imported and "mlflow" not in imported
    assert not (tmp_path / "home").exists()


def _refused(cli, home: Path, *args) -> str:
    code, out, err = cli(*args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, out, err)
    return lines[0]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--trials", "0"], "--trials"),
        (["--max-concurrent", "0"], "--max-concurrent"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**32)], "--seed"),
        (["--hours", "inf"], "--hours"),
        (["--hours", "-1"], "--hours"),
        (["--gpus-per-trial", "-1"], "--gpus-per-trial"),
        (["--trials", "two"], "--trials"),
        (["--tracking-uri", "foo://bar"], "not a URI MLflow can open"),
        (["--tracking-uri", "sqlite:////proc/hpsearch/mlflow.db"], "cannot write there"),
        (["--resume", "--fresh"], "--resume and --fresh"),
        (["--data-root", "somewhere"], "reads no data set"),
        (["--warm-count", "3"], "needs --warm-start"),
        (["--warm-start", "other", "--warm-count", "0"], "--warm-count"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_run_flags_are_refused_in_one_line(cli, home, tmp_path, args, expected):
    study = write_study(tmp_path / "ok.yaml", OK)
    assert expected in _refused(cli, home, "run", study, *args)
    assert not home.exists()


@pytest.mark.parametrize(
    "study,expected",
    [
        ("missing.yaml", "no such study file"),
        ("adir", "a folder, not a study file"),
        ("nope", "unknown study 'nope'"),
        ("unknown-trainable.yaml", "unknown trainable 'nope'"),
        (
            "unreported-metric.yaml",
            "digits-mlp does not report 'val_acc'; it reports train_loss, val_loss, val_accuracy",
        ),
    ],
)
def test_bad_study_arguments_are_refused_in_one_line(cli, home, tmp_path, monkeypatch, study, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    write_study(tmp_path / "unknown-trainable.yaml", UNKNOWN_TRAINABLE)
    write_study(tmp_path / "unreported-metric.yaml", OK + "metric: val_acc\nmode: max\n")  # each trial would fail
    assert expected in _refused(cli, home, "run", study)
    assert expected in _refused(cli, home, "check", study)
    assert not home.exists()


def test_a_tracking_uri_or_data_directory_that_cannot_be_created_is_refused(cli, home, tmp_path, monkeypatch):
    study = write_study(tmp_path / "ok.yaml", OK)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = _refused(cli, home, "run", study, "--tracking-uri", f"sqlite:///{blocker}/mlflow.db")
    assert f"{blocker} is not a folder" in line
    assert not home.exists()
    monkeypatch.setenv("HPSEARCH_HOME", str(blocker / "home"))
    assert "data directory" in _refused(cli, home, "run", study)
    assert blocker.read_text() == "not a folder"
    # A read of a sqlite store that does not exist says so and creates nothing.
    monkeypatch.setenv("HPSEARCH_HOME", str(home))
    assert "no records" in _refused(cli, home, "results", "x", "--tracking-uri", f"sqlite:///{tmp_path}/new/m.db")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "env,args,expected",
    [
        ({"HPSEARCH_MIN_FREE_MB": "lots"}, ["run", "{study}"], "HPSEARCH_MIN_FREE_MB"),
        ({"HPSEARCH_STOP_FREE_MB": "-5"}, ["run", "{study}"], "HPSEARCH_STOP_FREE_MB"),
        ({"HPSEARCH_TRACKING_URI": "foo://bar"}, ["run", "{study}"], "foo://bar"),
        ({"HPSEARCH_STORAGE": "{blocker}"}, ["run", "{study}"], "HPSEARCH_STORAGE"),
        ({"HPSEARCH_STORAGE": "s3://bucket/x"}, ["stop", "x"], "s3:// storage is not supported"),
        ({"HPSEARCH_CONFIG": "{tmp}"}, ["results", "x"], "HPSEARCH_CONFIG"),
        ({"HPSEARCH_CONFIG": "{config}"}, ["results", "x"], "colour: not a setting"),
        ({}, ["run", "{study}", "--storage", "{blocker}/state"], "--storage"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_environment_and_config_are_refused_in_one_line(cli, home, tmp_path, monkeypatch, env, args, expected):
    names = {
        "study": write_study(tmp_path / "ok.yaml", OK),
        "blocker": tmp_path / "a-file",
        "tmp": tmp_path,
        "config": tmp_path / "config.yaml",
    }
    names["blocker"].write_text("")
    names["config"].write_text(yaml.safe_dump({"colour": "blue"}))
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(**names))
    assert expected in _refused(cli, home, *[a.format(**names) for a in args])
    assert not home.exists()


def test_bad_query_flags_are_refused_and_change_nothing(cli, recorded, monkeypatch, tmp_path):
    home = recorded["home"]
    monkeypatch.setenv("HPSEARCH_HOME", str(home))
    (tmp_path / "adir").mkdir()
    (tmp_path / "a-file").write_text("")
    before = snapshot(home)
    for args, expected in [
        (["results", "digits-mlp", "--output", tmp_path / "adir"], "is a folder"),
        (
            ["results", "digits-mlp", "--format", "parquet", "--output", tmp_path / "a-file" / "r.parquet"],
            "not a folder",
        ),
        (["results", "digits-mlp", "--format", "parquet"], "give --output"),
        (["results", "digits-mlp", "--top", "0"], "--top"),
        (["results", "digits-mlp", "--state", "done"], "--state"),
        (["results", "digits-mlp", "--where", "lr <"], "--where"),
        (["results", "digits-mlp", "--sort", "nope"], "--sort"),
        (["results", "digits-mlp", "--run", "nope"], "--run"),
        (["show", "digits-mlp", "--run", "../x"], "--run"),
        (["results", "digits-mlp", "--format", "xml"], "--format"),
        (["results", "no such"], "invalid study name"),
        (["report", "digits-mlp", "--output", tmp_path / "adir"], "is a folder"),
        (["logs", "digits-mlp", "nope"], "no trial 'nope'"),
        (["promote", "digits-mlp", "--candidates", "0"], "--candidates"),
        (["promote", "digits-mlp", "--alias", "latest"], "--alias"),
        (["promote", "digits-mlp", "--name", "a b"], "--name"),
        (["rollback", "nope"], "no registered model"),
        (["ui", "--port", "70000"], "--port"),
        (["models", "--tracking-uri", "foo://bar"], "not a URI MLflow can open"),
    ]:
        assert expected in _refused(cli, home, *args), args
    assert snapshot(home) == before
    assert not list(tmp_path.glob("adir/*")) and (tmp_path / "a-file").read_text() == ""


# `logs` after `--fresh`: a sweep killed part-way (a crash), then replaced by a fresh run that closes its trials.
QUAD = {
    "name": "quadfresh",
    "trainable": "tests.quad:train",
    "metric": "loss",
    "mode": "min",
    "space": {"x": {"type": "float", "low": -1.0, "high": 1.0}},
    "fixed": {"sleep": 0.5},
    "trials": 40,
    "max_concurrent": 2,
    "asha": {"max_t": 6, "grace_period": 2},
}


def test_logs_of_a_trial_in_a_run_that_fresh_replaced(tmp_path, cli, monkeypatch):
    import tracking

    home, study = tmp_path / "home", tmp_path / "quadfresh.yaml"
    study.write_text(yaml.safe_dump(QUAD))
    env = {"HPSEARCH_HOME": str(home)}
    proc = spawn_cli("run", study, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # until one trial has finished, as MLflow records it
            if list((home / "ray").glob("quadfresh-*/hpsearch-logs/*.log")):
                store = tracking.Store(home=home)
                runs = tracking.parent_runs(store, "quadfresh")
                if runs and any(r["status"] != "RUNNING" for r in tracking.trial_rows(store, runs[0])):
                    break
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: the run and its running trials stay RUNNING
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    fresh = run_cli("run", study, "--fresh", "--trials", "2", cwd=REPO, env=env)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr

    store = tracking.Store(home=home)
    new, old = tracking.parent_runs(store, "quadfresh")
    old_rows = tracking.trial_rows(store, old)
    closed = [r for r in old_rows if r["reason"] and r["reason"].startswith("not resumed")]
    done = [r for r in old_rows if r["state"] in ("completed", "pruned")]
    assert done and closed, old_rows
    monkeypatch.setenv("HPSEARCH_HOME", str(home))
    for row in done + closed:
        code, out, err = cli("logs", "quadfresh", row["trial_id"], "--run", old.info.run_id)
        assert code == 0, err
        assert "quad trial starting with x=" in out and row["trial_id"] in out
    new_trial = tracking.trial_rows(store, new)[0]["trial_id"]
    code, out, err = cli("logs", "quadfresh", new_trial)  # the latest run, the fresh one
    assert code == 0 and "quad trial starting" in out, err
    assert "no trial" in _refused(cli, home, "logs", "quadfresh", new_trial, "--run", old.info.run_id)
