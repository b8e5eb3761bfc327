"""The night's work is never lost to an error or a kill near its end, with real faults: a trial's run deleted from
the tracking store mid-sweep (the store then refuses the engine's writes), a test evaluation and an export that
raise, SIGTERM while the best model is tested, SIGKILL mid-trial. Each time `hpsearch run STUDY --resume`
completes the run, and MLflow and Optuna hold every trial, and every epoch, once."""

import io
import os
import re
import signal
import time
from pathlib import Path

import optuna
import pytest
import yaml

import tracking
from search import api
from tests.conftest import run_cli
from tests.test_resume import records, start, wait_for_trials

T = tracking.tags


def with_faults(tmp_path: Path, *switched_on: str, **fixed) -> dict:
    """The spec fields that run tests/finishing.py's trainable, with the named faults switched on."""
    faults = tmp_path / "faults"
    faults.mkdir(exist_ok=True)
    for name in switched_on:
        (faults / name).touch()
    return {"trainable": "tests.finishing:QUAD", "fixed": {"faults": str(faults), **fixed}}


def trial_counts(home: Path) -> tuple[list[str], int]:
    """(the trial ids MLflow holds for the latest run, how many trials its Optuna study has)."""
    _, _, rows, studies = records(home)
    (study,) = studies.values()
    return sorted(r["trial_id"] for r in rows), len(study.trials)


def finish_tags(run) -> dict[str, str]:
    return {k.removeprefix(T.FINISH): v for k, v in run.data.tags.items() if k.startswith(T.FINISH)}


def test_an_error_in_the_engine_leaves_a_failed_run_that_resume_completes(tmp_path):
    # The fault: a running trial's run is deleted from the tracking store (from the MLflow UI, say), so the
    # store refuses the engine's next write to it, inside Tune's callback; and refuses it again when the
    # failing run closes its open trials.
    # Trials of 14 x 0.8 s: MLflow shows a trial's end up to 5 s late, and the next two must still be running
    # when the test sees the first two ended (with 6.4 s trials CI once found them all finished).
    home, path, env, proc = start(
        tmp_path, trials=4, **with_faults(tmp_path, sleep=0.8), asha={"max_t": 14, "grace_period": 14}
    )
    try:
        wait_for_trials(home, 2)  # the first two have ended, the next two have started
        deadline = time.monotonic() + 60
        while True:
            store, parents, rows, _ = records(home)
            running = [r for r in rows if r["status"] == "RUNNING"]
            if running or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert running, "MLflow showed no running trial after the first two ended"
        done_before = {r["trial_id"]: r["run_id"] for r in rows if r["status"] == "FINISHED"}
        victim = running[0]
        store.client.delete_run(victim["run_id"])
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, out
    assert "stopped by an error (below); its trials are kept: continue with `hpsearch run crashy --resume`" in out
    assert "(recording the run's end failed too: MlflowException" in out  # the second error is said, not raised
    raised = out[out.rindex("Traceback") :]
    assert "search/scheduling/_callback.py" in raised, raised  # the error raised is the first one, from the callback
    assert f"The run {victim['run_id']} must be in the 'active' state" in raised
    _, parents, rows, _ = records(home)
    assert parents[0].info.status == "FAILED"

    plain = run_cli("run", path, env=env)  # a failed run is not silently replaced
    assert plain.returncode == 2 and "FAILED" in plain.stderr and "--resume" in plain.stderr, plain.stderr
    shown = run_cli("show", "crashy", env=env)
    assert (
        "sweep stopped by an error, its trials kept; run `hpsearch run crashy --resume` to continue it" in shown.stdout
    )

    resumed = run_cli("run", path, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming run" in resumed.stdout
    store, parents, rows, studies = records(home)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 4 and {r["state"] for r in rows} == {"completed"}
    assert len(done_before) >= 2 and victim["trial_id"] not in done_before  # the first two had ended, as waited for
    assert all({r["trial_id"]: r["run_id"] for r in rows}[tid] == run_id for tid, run_id in done_before.items())
    (study,) = studies.values()
    assert len(study.trials) == 4 and {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    assert set(finish_tags(parents[0]).values()) == {"done"}
    assert "test_loss" in parents[0].data.metrics and parents[0].data.tags.get(T.MODEL_URI)
    assert (
        tracking.load_best_checkpoint(store, parents[0].info.run_id)["trial_id"] == parents[0].data.tags[T.BEST_TRIAL]
    )


def test_a_failed_test_evaluation_and_export_are_finished_by_resume_without_a_trial(tmp_path, monkeypatch, cli):
    home = tmp_path / "home"
    monkeypatch.setenv("HPSEARCH_HOME", str(home))
    path = tmp_path / "finicky.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "finicky",
                "metric": "loss",
                "mode": "min",
                "space": {"x": {"type": "float", "low": -1.0, "high": 1.0}},
                "trials": 3,
                "max_concurrent": 2,
                "asha": {"max_t": 3, "grace_period": 3},
                **with_faults(tmp_path, "fail-test", "fail-export"),
            }
        )
    )
    out = io.StringIO()
    outcome = api.run(str(path), out=out)
    assert outcome.best_trial is not None and outcome.exit_code == 0  # the search results stand
    assert not outcome.test_metrics and outcome.model_uri is None
    assert "finishing: the test evaluation failed: RuntimeError: injected fault (fail-test)" in out.getvalue()
    assert "finishing incomplete: no test evaluation, no servable model" in out.getvalue()
    store = tracking.Store(home=home)
    (parent,) = tracking.parent_runs(store, "finicky")
    assert parent.info.status == "FINISHED"
    steps = finish_tags(parent)
    assert steps["checkpoint"] == "done" and steps["test"].startswith("failed: RuntimeError: injected fault")
    assert steps["export"].startswith("failed:")
    code, text, _ = cli("show", "finicky")
    assert (
        code == 0
        and "finishing incomplete: no test evaluation, no servable model; run `hpsearch run finicky --resume`" in text
    ), text
    trials = tracking.trial_rows(store, parent)
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(home / "optuna" / "finicky.journal"))
    )
    optuna_trials = len(optuna.load_study(study_name=parent.data.tags[T.OPTUNA_STUDY], storage=journal).trials)

    out = io.StringIO()
    resumed = api.run(str(path), resume=True, out=out)
    assert f"study finicky: finishing run {parent.info.run_id}" in out.getvalue()
    assert resumed.test_metrics and resumed.model_uri and resumed.best_trial == outcome.best_trial
    (parent,) = tracking.parent_runs(store, "finicky")
    assert parent.info.status == "FINISHED" and parent.data.tags[T.RESUMES] == "1"
    assert set(finish_tags(parent).values()) == {"done"} and "hpsearch.no_model" not in parent.data.tags
    assert parent.data.metrics["test_loss"] == pytest.approx(resumed.test_metrics["test_loss"])
    again = tracking.trial_rows(store, parent)  # no trial ran again
    assert sorted((r["trial_id"], r["run_id"], r["seconds"]) for r in again) == sorted(
        (r["trial_id"], r["run_id"], r["seconds"]) for r in trials
    )
    assert len(optuna.load_study(study_name=parent.data.tags[T.OPTUNA_STUDY], storage=journal).trials) == optuna_trials
    code, text, _ = cli("show", "finicky")
    assert code == 0 and "finishing incomplete" not in text and "--resume" not in text
    code, _, err = cli("run", str(path), "--resume")
    assert code == 2 and "no unfinished run" in err


def test_sigterm_while_the_best_model_is_tested_leaves_a_killed_run_that_resume_finishes(tmp_path):
    home, path, env, proc = start(
        tmp_path, trials=2, **with_faults(tmp_path, "block-test"), asha={"max_t": 3, "grace_period": 3}
    )
    entered = tmp_path / "faults" / "in-test"
    try:
        deadline = time.monotonic() + 180
        while not entered.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert entered.exists(), "the run never got to its test evaluation"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert (
        "interrupted while finishing; the sweep's results are recorded: complete it with `hpsearch run crashy "
        "--resume`" in out
    )
    _, parents, _, _ = records(home)
    assert parents[0].info.status == "KILLED"
    assert finish_tags(parents[0]) == {"checkpoint": "done", "export": "done"}  # the test evaluation was cut short
    shown = run_cli("show", "crashy", env=env)
    assert "finishing incomplete: no test evaluation; run `hpsearch run crashy --resume`" in shown.stdout, shown.stdout
    ids, optuna_trials = trial_counts(home)

    (tmp_path / "faults" / "block-test").unlink()
    resumed = run_cli("run", path, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "finishing run" in resumed.stdout and "test_loss" in resumed.stdout
    _, parents, _, _ = records(home)
    assert parents[0].info.status == "FINISHED" and set(finish_tags(parents[0]).values()) == {"done"}
    assert "test_loss" in parents[0].data.metrics
    assert trial_counts(home) == (ids, optuna_trials)  # finishing only: no trial ran


def test_after_sigkill_mid_trial_and_resume_every_epoch_is_recorded_once(tmp_path):
    # A checkpoint at epoch 1 only: a trial resumed from it reruns the epochs that MLflow already holds.
    # Trials of 16 x 0.8 s: MLflow shows a trial's epochs up to 5 s late, so the trial seen at its seventh epoch
    # is at most at its fourteenth when killed: still running (with 6.4 s trials it could have ended unseen).
    home, path, env, proc = start(
        tmp_path,
        trials=4,
        **with_faults(tmp_path, sleep=0.8, checkpoint_every=100),
        asha={"max_t": 16, "grace_period": 16},
    )
    client = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if list((home / "ray").glob("crashy-*/hpsearch-logs/*.log")):
                store, _, rows, _ = records(home)
                client = store.client
                if any(
                    len(client.get_metric_history(r["run_id"], "loss")) >= 7 for r in rows if r["status"] == "RUNNING"
                ):
                    break
            time.sleep(0.3)
        else:
            raise AssertionError("no trial got 7 epochs recorded in MLflow")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    _, _, rows, _ = records(home)
    held = {
        r["trial_id"]: len(client.get_metric_history(r["run_id"], "loss")) for r in rows if r["status"] == "RUNNING"
    }
    assert any(n >= 7 for n in held.values()), held

    resumed = run_cli("run", path, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    store, parents, rows, studies = records(home)
    assert parents[0].info.status == "FINISHED"
    # The fault happened: some trial reran epochs that MLflow held at the kill.
    reran = {}  # trial -> the first epoch it ran again from, after the resume
    for log in (home / "ray").glob("crashy-*/hpsearch-logs/*.log"):
        starts = re.findall(r"trial (?:starting|resuming at epoch (\d+))", log.read_text())
        if len(starts) > 1:
            reran[log.stem] = int(starts[-1] or 1)
    assert any(reran.get(tid, 10**6) <= n for tid, n in held.items()), (reran, held)
    (study,) = studies.values()
    intermediate = {t.user_attrs.get("ray_trial_id"): t.intermediate_values for t in study.trials}
    for row in rows:
        if (row["reason"] or "").startswith("lost in a crash"):
            continue
        epochs = list(range(1, row["epochs"] + 1))
        for key in ("loss", "time_total_s"):
            steps = sorted(m.step for m in store.client.get_metric_history(row["run_id"], key))
            assert steps == epochs, (row["trial_id"], key, steps)
        assert len(store.client.get_metric_history(row["run_id"], T.BEST_VALUE)) == 1
        assert sorted(intermediate[row["trial_id"]]) == epochs
