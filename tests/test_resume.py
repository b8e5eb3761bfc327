"""Resume after a crash, with real fault injection: a sweep in a subprocess is killed part-way (SIGKILL of
its whole process group, as a crash or reboot would, or SIGTERM) and continued with `--resume`, or replaced
with `--fresh`. Afterwards every trial is accounted for exactly once, in `results`, MLflow and Optuna."""

import collections
import json
import os
import signal
import time
from pathlib import Path

import optuna
import yaml

import tracking
from tests.conftest import REPO, run_cli, spawn_cli

# Trials of 8 epochs x 0.6 s; with 2 running at once, 12 trials take about 25 s after Ray starts.
SPEC = {
    "name": "crashy",
    "trainable": "tests.quad:train",
    "metric": "loss",
    "mode": "min",
    "space": {"x": {"type": "float", "low": -1.0, "high": 1.0}},
    "fixed": {"sleep": 0.6},
    "trials": 12,
    "max_concurrent": 2,
    "asha": {"max_t": 8, "grace_period": 2},
}


def start(tmp_path: Path, **fields):
    """`hpsearch run` of the study in a subprocess of its own session (so its Ray dies with it when killed).
    Returns (home, study file, env for later commands, process)."""
    home, path = tmp_path / "home", tmp_path / "crashy.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **fields}))
    env = {"HPSEARCH_HOME": str(home)}
    return home, path, env, spawn_cli("run", path, cwd=REPO, env=env)


def wait_for_trials(home: Path, ended: int, midway: bool = False, timeout: float = 180) -> None:
    """Until the sweep has recorded `ended` finished trials (read from MLflow, as a user's `results` would)
    and, with `midway`, a running trial has checkpointed its fourth epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list((home / "ray").glob("crashy-*/hpsearch-logs/*.log")):  # MLflow's tables exist by now
            store = tracking.Store(home=home)
            runs = tracking.parent_runs(store, "crashy")
            rows = tracking.trial_rows(store, runs[0]) if runs else []
            running = [Path(r["trial_dir"]) for r in rows if r["status"] == "RUNNING" and r["trial_dir"]]
            if sum(r["status"] != "RUNNING" for r in rows) >= ended and (
                not midway or any(list(d.glob("checkpoint_00000[3-9]")) for d in running)
            ):
                return
        time.sleep(0.2)
    raise AssertionError(f"the sweep did not get to {ended} finished trials in {timeout}s")


def records(home: Path):
    """(parent runs, child rows of the latest, Optuna trials of the latest) as the stores hold them."""
    store = tracking.Store(home=home)
    parents = tracking.parent_runs(store, "crashy")
    rows = tracking.trial_rows(store, parents[0])
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(home / "optuna" / "crashy.journal"))
    )
    studies = {
        p.info.run_id: optuna.load_study(study_name=p.data.tags[tracking.tags.OPTUNA_STUDY], storage=storage)
        for p in parents
    }
    return store, parents, rows, studies


def test_sigkill_mid_sweep_then_resume_accounts_for_every_trial(tmp_path):
    home, path, env, proc = start(tmp_path)
    try:
        wait_for_trials(home, 2, midway=True)
        time.sleep(1)  # Ray saves its experiment state right after each trial checkpoint
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, Ray's head and its workers: nothing shuts down cleanly
        proc.communicate(timeout=60)
    store, parents, rows, studies = records(home)
    assert parents[0].info.status == "RUNNING" and any(r["status"] == "RUNNING" for r in rows)
    killed_at = {r["trial_id"]: r["state"] for r in rows}
    # Whether the kill lands after a trial started but before Ray saved its state is a matter of timing, so
    # two such trials are added as the stores would hold them: one Optuna had suggested but MLflow never
    # heard of, one both had started.
    (study,) = studies.values()
    for ghost in ("ghost001", "ghost002"):
        study.ask().set_user_attr("ray_trial_id", ghost)
    T = tracking.tags
    store.client.create_run(
        parents[0].info.experiment_id,
        run_name="ghost002",
        tags={
            "mlflow.parentRunId": parents[0].info.run_id,
            T.KIND: "trial",
            T.STUDY: "crashy",
            T.TRIAL_ID: "ghost002",
            T.STATE: "running",
        },
    )

    plain = run_cli("run", path, env=env)  # an unfinished run is never silently replaced
    assert plain.returncode == 2 and "--resume" in plain.stderr and "--fresh" in plain.stderr, plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1

    resumed = run_cli("run", path, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming run" in resumed.stdout

    store, parents, rows, studies = records(home)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent run continued
    assert parents[0].data.tags[tracking.tags.RESUMES] == "1"
    ids = [r["trial_id"] for r in rows]
    # Trials that started after Ray's last saved state cannot be resumed: they are recorded as lost
    # (failed), and the resumed sweep still runs the spec's number of trials besides.
    lost = [r for r in rows if (r["reason"] or "").startswith("lost in a crash")]
    assert len(ids) == len(set(ids)) == SPEC["trials"] + len(lost)  # each trial exactly once
    assert {"ghost001", "ghost002"} <= {r["trial_id"] for r in lost}
    assert set(killed_at) <= set(ids)
    assert "lost" in resumed.stdout
    assert {r["status"] for r in rows} <= {"FINISHED", "FAILED"}  # nothing left RUNNING
    frame = json.loads(run_cli("results", "crashy", "--format", "json", env=env).stdout)
    assert sorted(r["trial_id"] for r in frame) == sorted(ids)
    assert all(r["state"] in ("completed", "pruned", "failed") for r in frame)
    (study,) = studies.values()
    states = collections.Counter(t.state for t in study.trials)
    assert optuna.trial.TrialState.RUNNING not in states
    assert len(study.trials) == len(ids)  # Optuna and MLflow agree on how many trials there were
    assert [r for r in frame if r["state"] == "failed"] == [
        r for r in frame if r["trial_id"] in {x["trial_id"] for x in lost}
    ]
    assert states[optuna.trial.TrialState.FAIL] == len(lost)

    # A trial that was mid-way at the kill continued from its checkpoint instead of starting over.
    outputs = [p.read_text() for p in (home / "ray").glob("crashy-*/hpsearch-logs/*.log")]
    continued = sum("resuming at epoch" in text for text in outputs)
    assert continued >= 1
    running_at_kill = sum(state == "running" for state in killed_at.values())
    print(
        f"killed with {len(killed_at) - running_at_kill} trials ended and {running_at_kill} running; resumed: "
        f"{continued} continued from a checkpoint, {len(lost)} lost, {len(ids)} trials in all, {dict(states)}"
    )

    # The best checkpoint loads and reproduces its metric: quad's loss at (x, epoch) is (x - 0.3)^2 + 1/epoch.
    best = tracking.load_best_checkpoint(store, parents[0].info.run_id)
    x = float(best["model"]["x"][0])
    assert abs((x - 0.3) ** 2 + 1.0 / best["epoch"] - best["value"]) < 1e-6  # x is kept as float32
    assert best["value"] == min(r["metric"] for r in frame if r["metric"] is not None)


def test_a_second_run_is_refused_then_sigterm_then_fresh(tmp_path):
    # 40 trials: far more than run before the SIGTERM, however slowly the second `run` starts on a busy machine.
    home, path, env, proc = start(tmp_path, trials=40)
    try:
        wait_for_trials(home, 1)
        second = run_cli("run", path, env=env)
        assert second.returncode == 2 and f"already running: pid {proc.pid}" in second.stderr, second.stderr
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "--resume" in out, out
    _, parents, rows, _ = records(home)
    assert parents[0].info.status == "KILLED"
    assert not list((home / "control").glob("crashy.lock*"))  # the holder released its lock

    changed = run_cli("run", path, "--resume", "--trials", "20", env=env)
    assert changed.returncode == 2 and "trials: 40 -> 20" in changed.stderr, changed.stderr

    fresh = run_cli("run", path, "--fresh", "--trials", "2", env=env)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    store, parents, rows, studies = records(home)
    old, new = parents[1], parents[0]
    assert new.info.status == "FINISHED" and len(rows) == 2
    assert old.info.status == "KILLED"
    old_rows = tracking.trial_rows(store, old)
    assert old_rows and {r["status"] for r in old_rows} <= {"FINISHED", "FAILED"}
    assert all(t.state != optuna.trial.TrialState.RUNNING for s in studies.values() for t in s.trials)


def test_a_trial_the_crash_left_without_a_ray_id_is_failed_under_the_id_mlflow_records_it_by():
    """A kill between Optuna's ask and the searcher naming the trial leaves a RUNNING trial with no Ray id; the
    resume fails it under `optuna-N`, the id the MLflow run it gets is tagged with, so the two stores agree."""
    from search.sampling._searcher import RAY_TRIAL_ID, fail_running

    study = optuna.create_study()
    named, unnamed = study.ask(), study.ask()
    named.set_user_attr(RAY_TRIAL_ID, "abc123")
    failed = fail_running(study, "lost in a crash: test")
    assert sorted(failed) == sorted([("abc123", {}), (f"optuna-{unnamed.number}", {})])
    assert {t.user_attrs[RAY_TRIAL_ID] for t in study.trials} == {"abc123", f"optuna-{unnamed.number}"}
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.FAIL}
