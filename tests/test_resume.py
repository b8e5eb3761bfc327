"""Resume after a crash, with real fault injection: a sweep in a subprocess is killed part-way (SIGKILL of
its whole process group, as a crash or reboot would, or SIGTERM) and continued with `--resume`, or replaced
with `--fresh`. Afterwards every trial is accounted for exactly once, in `results`, MLflow and Optuna."""

import collections
import json
import os
import pickle
import signal
import time
from pathlib import Path

import optuna
import yaml

import tracking
from tests.conftest import REPO, run_cli, spawn_cli
from tests.test_factory import STUDY

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


def saved_trials(home: Path) -> dict[str, int]:
    """The trials (Ray id -> Optuna number) in the searcher state of Ray's latest experiment snapshot: the
    trials a resume can continue. Ray writes a snapshot at most every 10 s or so, not at each trial's start."""
    saved = sorted(home.glob("ray/crashy-*/searcher-state-*.pkl"))  # hpsearch's StudySearch.save wrote it
    if not saved:
        return {}
    try:
        with open(saved[-1], "rb") as f:
            return dict(pickle.load(f)["trials"])
    except (EOFError, pickle.UnpicklingError):  # being written right now
        return {}


def unsaved(home: Path, study: optuna.Study) -> set[str]:
    """The Ray ids of the trials Optuna holds as running that Ray's latest snapshot does not hold."""
    saved = set(saved_trials(home).values())
    return {
        t.user_attrs.get("ray_trial_id", f"optuna-{t.number}")
        for t in study.trials
        if t.state == optuna.trial.TrialState.RUNNING and t._trial_id not in saved
    }


def _saved_midway(home: Path, rows: list[dict], unsaved_ids: set[str]) -> bool:
    """Whether a running trial that Ray's latest snapshot holds had checkpointed its fourth epoch before that
    snapshot was written: the resume continues it from there."""
    snapshots = sorted(home.glob("ray/crashy-*/searcher-state-*.pkl"), key=lambda f: f.stat().st_mtime)
    if not snapshots:
        return False
    written = snapshots[-1].stat().st_mtime
    for r in rows:
        if r["status"] == "RUNNING" and r["trial_dir"] and r["trial_id"] not in unsaved_ids:
            if any(c.stat().st_mtime < written for c in Path(r["trial_dir"]).glob("checkpoint_00000[3-9]")):
                return True
    return False


def wait_for_a_trial_after_the_snapshot(home: Path, timeout: float = 180) -> None:
    """Until a trial that Optuna and MLflow both show running is not in Ray's latest snapshot, while another
    running trial is in it with a checkpoint midway: a kill now leaves a trial that both stores have started
    and that no resume can continue, and one that the resume continues from its checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, rows, studies = records(home)
        (study,) = studies.values()
        lost = unsaved(home, study)
        if lost & {r["trial_id"] for r in rows if r["status"] == "RUNNING"} and _saved_midway(home, rows, lost):
            return
        time.sleep(0.1)
    raise AssertionError("no moment with a trial started after Ray's latest snapshot and one midway in it")


def test_sigkill_mid_sweep_then_resume_accounts_for_every_trial(tmp_path):
    home, path, env, proc = start(tmp_path)
    try:
        wait_for_trials(home, 2, midway=True)
        wait_for_a_trial_after_the_snapshot(home)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, Ray's head and its workers: nothing shuts down cleanly
        proc.communicate(timeout=60)
    store, parents, rows, studies = records(home)
    assert parents[0].info.status == "RUNNING" and any(r["status"] == "RUNNING" for r in rows)
    killed_at = {r["trial_id"]: r["state"] for r in rows}
    # What the kill left: Optuna trials still running that Ray's last snapshot does not hold. The resume cannot
    # continue them: they are lost, whether MLflow had heard of them or not.
    (study,) = studies.values()
    ghosts = unsaved(home, study)
    assert ghosts & {r["trial_id"] for r in rows if r["status"] == "RUNNING"}, (ghosts, killed_at)

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
    assert {r["trial_id"] for r in lost} == ghosts
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


SLOW_MODULE = """
import time

import torch
from torch import nn
from trainables import from_model


class Slow(nn.Module):  # a user's model that takes its time: 8 epochs of about 0.5 s
    def __init__(self, config):
        super().__init__()
        self.linear = nn.Linear(8, 2)

    def forward(self, x):
        time.sleep(0.1)
        return self.linear(x)


def data(config):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 8, generator=g)
    y = (x.sum(1) > 0).long()
    return (x[:160], y[:160]), (x[160:200], y[160:200]), (x[200:], y[200:])


slow = from_model(Slow, data, defaults={"epochs": 8, "batch_size": 64})
"""


def test_a_user_trainable_killed_mid_sweep_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL of the whole `hpsearch run` (a crash or reboot) while a trial of a user's own model is mid-way;
    `--resume` continues that trial from its last checkpoint, in the user's project folder."""
    (tmp_path / "slow.py").write_text(SLOW_MODULE)
    (tmp_path / "slow.yaml").write_text(
        STUDY.format(name="slow", trainable="slow:slow", trials=3).replace(
            "max_t: 2, grace_period: 2", "max_t: 8, grace_period: 8"
        )
    )
    home = tmp_path / "home"
    env = {"HPSEARCH_HOME": str(home)}
    proc = spawn_cli("run", "slow.yaml", cwd=tmp_path, env=env)
    try:  # until a trial has checkpointed its third epoch (the loop checkpoints each epoch that improves)
        deadline = time.monotonic() + 300
        while not list(home.glob("ray/slow-*/*/checkpoint_00000[2-7]")):
            assert time.monotonic() < deadline and proc.poll() is None, "no trial got to its third epoch"
            time.sleep(0.2)
        time.sleep(1)  # Ray saves its experiment state right after each trial checkpoint
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)

    resumed = run_cli("run", "slow.yaml", "--resume", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming run" in resumed.stdout and "test_accuracy" in resumed.stdout
    outputs = [p.read_text() for p in home.glob("ray/slow-*/hpsearch-logs/*.log")]
    assert any("resuming at epoch" in text for text in outputs), outputs  # not started over
    store = tracking.Store(home=home)
    (parent,) = tracking.parent_runs(store, "slow")
    rows = tracking.trial_rows(store, parent)
    assert parent.info.status == "FINISHED" and {r["status"] for r in rows} <= {"FINISHED", "FAILED"}
    assert len({r["trial_id"] for r in rows}) == len(rows) >= 3
