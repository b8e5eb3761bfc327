"""Budgets, `hpsearch stop`, checkpoint collection and the free-disk check, on real sweeps."""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

from search import api
from tests.conftest import run_cli

QUAD = {
    "trainable": "tests.quad:train",
    "metric": "loss",
    "mode": "min",
    "space": {"x": {"type": "float", "low": -1.0, "high": 1.0}},
    "max_concurrent": 2,
}


def write(tmp_path, name, **fields):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**QUAD, "name": name, **fields}, sort_keys=False))
    return str(path)


def checkpoint_dirs(home: Path, study: str) -> list[Path]:
    return sorted((home / "ray").glob(f"{study}-*/*/checkpoint_*"))


def optuna_states(home: Path, study: str):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(home / "optuna" / f"{study}.journal"))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    return [t.state for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials]


def test_hours_budget_stops_running_trials_cleanly(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    # Trials of 40 x 0.25 s = 10 s each, a budget of 6 s: the first two are cut short.
    path = write(
        tmp_path, "budget", trials=6, hours=6 / 3600, fixed={"sleep": 0.25}, asha={"max_t": 40, "grace_period": 40}
    )
    outcome = api.run(path, out=io.StringIO())
    assert outcome.exit_code == 0 and outcome.best_trial is not None
    frame = api.results("budget")
    assert set(frame["state"]) == {"stopped"} and set(frame["reason"]) == {"budget"}
    assert all(0 < e < 40 for e in frame["epochs"])
    assert set(optuna_states(tmp_path / "home", "budget")) <= {optuna.trial.TrialState.PRUNED}
    assert outcome.seconds < 60


def test_stop_from_another_shell_ends_the_sweep_cleanly(tmp_path):
    home = tmp_path / "home"
    env = {"HPSEARCH_HOME": str(home)}
    path = write(tmp_path, "stoppable", trials=4, fixed={"sleep": 0.5}, asha={"max_t": 200, "grace_period": 200})
    exe = Path(sys.executable).parent / "hpsearch"
    proc = subprocess.Popen(
        [str(exe), "run", path],
        cwd=Path(__file__).parent.parent,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((home / "ray").glob("stoppable-*/hpsearch-logs/*.log")) and time.monotonic() < deadline:
            time.sleep(0.5)  # until a trial is running
        time.sleep(2)
        stop = run_cli("stop", "stoppable", env=env)
        assert stop.returncode == 0, stop.stderr
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    rows = json.loads(run_cli("results", "stoppable", "--format", "json", env=env).stdout)
    assert rows and {r["state"] for r in rows} == {"stopped"} and {r["reason"] for r in rows} == {"stop requested"}
    assert set(optuna_states(home, "stoppable")) <= {optuna.trial.TrialState.PRUNED}
    assert not (home / "control" / "stoppable.stop").exists()  # the request is consumed


def test_checkpoints_of_beaten_trials_are_deleted(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HPSEARCH_HOME", str(home))
    no_pruning = {"max_t": 3, "grace_period": 3}
    api.run(write(tmp_path, "keepall", trials=8, keep_checkpoints=100, asha=no_pruning), out=io.StringIO())
    api.run(write(tmp_path, "keep2", trials=8, keep_checkpoints=2, asha=no_pruning), out=io.StringIO())
    assert len(checkpoint_dirs(home, "keepall")) == 8
    kept = checkpoint_dirs(home, "keep2")
    assert len(kept) == 2
    best = api.results("keep2").iloc[:2]  # the two best trials are the ones whose checkpoints remain
    assert {d.parent.name.split("_")[2] for d in kept} == set(best["trial_id"])
    summary, _ = api.show("keep2")
    assert summary.disk_bytes and summary.disk_bytes > 0


def test_run_refuses_to_start_without_free_disk(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HPSEARCH_MIN_FREE_MB", str(10**12))
    code, _, err = cli("run", write(tmp_path, "full", trials=2))
    assert code == 2 and "a sweep needs at least" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "home").exists()


def test_a_sweep_stops_cleanly_when_the_disk_fills_up(tmp_path, monkeypatch):
    import threading

    home = tmp_path / "home"
    monkeypatch.setenv("HPSEARCH_HOME", str(home))
    monkeypatch.setenv("HPSEARCH_STOP_FREE_MB", "0")
    path = write(tmp_path, "fills", trials=6, fixed={"sleep": 0.3}, asha={"max_t": 40, "grace_period": 40})

    def fill_the_disk():  # as seen by the sweep: free space drops below the stop threshold mid-run
        deadline = time.monotonic() + 120
        while not list((home / "ray").glob("fills-*/hpsearch-logs/*.log")) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        os.environ["HPSEARCH_STOP_FREE_MB"] = str(10**12)

    filler = threading.Thread(target=fill_the_disk, daemon=True)
    filler.start()
    out = io.StringIO()
    outcome = api.run(path, out=out)
    filler.join()
    assert "sweep ended early: disk full" in out.getvalue()
    frame = api.results("fills")
    assert len(frame) < 6 and set(frame["state"]) == {"stopped"}
    assert all(reason.startswith("disk full") for reason in frame["reason"])
    assert outcome.best_trial is not None and outcome.exit_code == 0  # finalised: best checkpoint logged
    assert set(optuna_states(home, "fills")) <= {optuna.trial.TrialState.PRUNED}


def test_ui_serves_the_study_store_on_localhost_only(tmp_path, monkeypatch, cli):
    import socket
    import urllib.request

    home = tmp_path / "home"
    monkeypatch.setenv("HPSEARCH_HOME", str(home))
    code, _, err = cli("ui")
    assert code == 2 and "no records under" in err  # nothing to serve yet, and nothing created
    assert not home.exists()
    api.run(write(tmp_path, "viewed", trials=2), out=io.StringIO())
    code, _, err = cli("ui", "nosuch")
    assert code == 2 and "no records for study 'nosuch'" in err

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "hpsearch"
    proc = subprocess.Popen(
        [str(exe), "ui", "viewed", "--port", str(port)],
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=viewed"
        deadline, body = time.monotonic() + 90, None
        while time.monotonic() < deadline and body is None and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    body = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "the UI did not answer"
        assert body["experiment"]["name"] == "viewed"  # it serves this store
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listening and all("127.0.0.1:" in line for line in listening.strip().splitlines()), listening
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"MLflow UI at http://127.0.0.1:{port}/#/experiments/" in out
