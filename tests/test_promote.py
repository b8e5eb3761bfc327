"""The test split takes no part in selection: it is read once, by the driver, for the final best
checkpoint; promoting and reporting read it no more (the result is cached by the checkpoint's digest)."""

import collections
import io
import os
from pathlib import Path

import numpy as np
import pytest

from search import api
from tests.conftest import write_study


def test_the_test_split_is_read_once_for_the_final_best_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    study = write_study(
        tmp_path / "counted.yaml",
        f"""\
        name: counted
        trainable: tests.counting:trainable
        space:
          lr: {{type: float, low: 1.0e-3, high: 1.0e-1, log: true}}
        fixed: {{log_dir: "{tmp_path}"}}
        trials: 4
        asha: {{max_t: 3, grace_period: 1, reduction_factor: 2}}
        max_concurrent: 2
        """,
    )
    outcome = api.run(str(study), out=io.StringIO())
    assert outcome.test_metrics and outcome.best_trial

    def reads():
        lines = (tmp_path / "reads.log").read_text().split()
        return collections.Counter(zip(lines[::2], lines[1::2]))

    during = reads()
    driver = str(os.getpid())
    test_reads = {pid: n for (pid, split), n in during.items() if split == "test"}
    assert test_reads == {driver: 1}  # once, in the driver, after the search
    # The workers trained on the training split, each reading it once for all the trials it ran (4 trials here).
    worker_reads = {pid: n for (pid, split), n in during.items() if split == "train" and pid != driver}
    assert worker_reads and set(worker_reads.values()) == {1}

    api.promote("counted")  # tested already: the cached result is reused
    api.report("counted", output=str(tmp_path / "counted.html"))  # the report reads the validation split
    assert reads()[(driver, "test")] == 1
    assert sum(n for (_, split), n in reads().items() if split == "test") == 1


def test_promote_with_reseeds_retrains_the_candidates_and_records_the_evidence(tmp_path, monkeypatch, cli):
    import json

    import tracking

    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    study = write_study(
        tmp_path / "seeded.yaml",
        """\
        name: seeded
        trainable: digits-mlp
        space:
          lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
        trials: 4
        asha: {max_t: 3, grace_period: 3}
        max_concurrent: 2
        """,
    )
    api.run(str(study), out=io.StringIO())
    code, out, err = cli("promote", "seeded", "--candidates", "2", "--reseeds", "2", "--format", "json")
    assert code == 0, err
    info = json.loads(out)
    assert len(info["candidates"]) == 2 and sum(c["chosen"] for c in info["candidates"]) == 1
    assert all(len(c["values"]) == 3 for c in info["candidates"])  # completed original + 2 retrainings
    means = [c["mean"] for c in info["candidates"]]
    assert means == sorted(means, reverse=True) and info["candidates"][0]["chosen"]
    chosen = info["candidates"][0]
    store = tracking.Store()
    version = store.client.get_model_version("seeded", str(info["version"]))
    assert version.tags["trial_id"] == chosen["trial_id"] and version.tags["seeds"] == "3"
    assert abs(float(version.tags["val_mean"]) - chosen["mean"]) < 1e-12 and "val_std" in version.tags
    assert "test_accuracy" in info["test_metrics"]
    parent = tracking.parent_runs(store, "seeded")[0]
    retrained = store.client.search_runs([parent.info.experiment_id], filter_string="tags.`hpsearch.kind` = 'reseed'")
    assert len(retrained) == 4 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in retrained)
    assert len(api.results("seeded")) == 4  # retrainings are not search trials


def _clocked_study(tmp_path, monkeypatch, sleep: float):
    """A finished sweep of tests.clocked (2 trials that ran to max_t, 1 CPU each); returns the fail file."""
    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    fail_file = tmp_path / "fail"
    study = write_study(
        tmp_path / "clocked.yaml",
        f"""\
        name: clocked
        trainable: tests.clocked:train
        metric: loss
        mode: min
        space:
          x: {{type: float, low: -1.0, high: 1.0}}
        fixed: {{fail_file: "{fail_file}", sleep: {sleep}}}
        trials: 2
        asha: {{max_t: 2, grace_period: 2}}
        max_concurrent: 2
        """,
    )
    api.run(str(study), out=io.StringIO())
    return fail_file


def test_promotion_retrains_as_ray_tasks_in_parallel(tmp_path, monkeypatch):
    import tracking
    from search.review import _reseed

    _clocked_study(tmp_path, monkeypatch, sleep=1.5)
    out = io.StringIO()
    store, parent, ranked, chosen = _reseed.retrain_candidates("clocked", 2, 1, out=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(" seed " in line and ": loss " in line for line in lines), lines
    assert [len(c.values) for c in ranked] == [2, 2] and chosen is ranked[0] and ranked[0].mean <= ranked[1].mean
    runs = store.client.search_runs([parent.info.experiment_id], filter_string="tags.`hpsearch.kind` = 'reseed'")
    assert len(runs) == 2
    spans = [(r.data.metrics["started"], r.data.metrics["ended"]) for r in runs]
    pids = {int(r.data.metrics["pid"]) for r in runs}
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans  # they overlapped
    assert os.getpid() not in pids and len(pids) == 2  # in two worker processes, not in pytest's
    assert {r.data.tags[tracking.tags.RESEED_OF] for r in runs} == {c.trial_id for c in ranked}
    assert tracking.parent_runs(store, "clocked")[0].info.run_id == parent.info.run_id


def test_a_failing_retraining_is_reported_and_does_not_crash_the_promotion(tmp_path, monkeypatch):
    from search.review import _reseed

    fail_file = _clocked_study(tmp_path, monkeypatch, sleep=0.0)
    rows = api.results("clocked")
    failing, working = rows["params"].iloc[0]["x"], rows["params"].iloc[1]["x"]  # the best one fails
    fail_file.write_text(repr(failing))
    out = io.StringIO()
    store, parent, ranked, chosen = _reseed.retrain_candidates("clocked", 2, 2, out=out)
    lines = out.getvalue().splitlines()
    failed = [line for line in lines if "failed: " in line]
    assert len(lines) == 4 and len(failed) == 2, lines
    assert all(f"RuntimeError: x={failing!r} fails on purpose" in line for line in failed), failed
    by_trial = {c.trial_id: c for c in ranked}
    assert [len(c.values) for c in ranked if c.params["x"] == failing] == [1]  # its original trial only
    assert [len(c.values) for c in ranked if c.params["x"] == working] == [3]
    assert len(by_trial) == 2 and chosen is ranked[0]
    runs = store.client.search_runs([parent.info.experiment_id], filter_string="tags.`hpsearch.kind` = 'reseed'")
    assert len(runs) == 2  # only the retrainings that succeeded are recorded


def test_a_winner_whose_best_is_its_own_trial_is_promoted_from_its_kept_checkpoint(tmp_path, monkeypatch, cli):
    """The case a new user met: the winning configuration's best value is its original trial's, that trial is
    not the study's logged best, and its checkpoint is in its Ray trial folder. Promotion uses it; a second
    promotion reuses the recorded retrainings; once the trial's own checkpoint is gone, its retraining's
    stands in, and with --folds (which promotes the trial's own checkpoint) a gone one is refused up front."""
    import json
    import shutil
    from pathlib import Path

    import mlflow

    import tracking
    from tests.clocked import PENALTY

    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    penalty = tmp_path / "penalty"
    study = write_study(
        tmp_path / "kept.yaml",
        f"""\
        name: kept
        trainable: tests.clocked:CLOCKED
        metric: loss
        mode: min
        space:
          x: {{type: float, low: -1.0, high: 1.0}}
        fixed: {{fail_file: "{tmp_path / "no-fail"}", penalty_file: "{penalty}"}}
        trials: 3
        asha: {{max_t: 2, grace_period: 2}}
        max_concurrent: 2
        """,
    )
    api.run(str(study), out=io.StringIO())
    rows = api.results("kept")
    best, second = rows.iloc[0], rows.iloc[1]
    penalty.write_text(repr(best["params"]["x"]))  # the study's best retrains 10 worse: the second one wins
    code, out, err = cli("promote", "kept", "--candidates", "2", "--reseeds", "1", "--format", "json")
    assert code == 0, err
    info = json.loads(out)
    assert info["trial_id"] == second["trial_id"] != info["single_best"]
    chosen = next(c for c in info["candidates"] if c["chosen"])
    assert chosen["values"] == [second["metric"], second["metric"]]  # its trial, then its retraining (equal)
    store = tracking.Store()
    version = store.client.get_model_version("kept", str(info["version"]))
    runs = {r["trial_id"]: r for r in tracking.trial_rows(store, tracking.parent_runs(store, "kept")[0])}
    assert version.run_id == runs[second["trial_id"]]["run_id"]  # logged on its own trial's run: its checkpoint
    model = mlflow.pyfunc.load_model(info["model_uri"])
    x = second["params"]["x"]
    assert float(model.predict(np.zeros((1, 1), "float32"))[0, 0]) == pytest.approx(x**2, abs=1e-6)
    assert info["compute_s"] > 0 and info["test_metrics"]["test_loss"] == pytest.approx((x - 0.3) ** 2, abs=1e-9)

    # Run again: the two recorded retrainings are reused, nothing trains.
    code, out, err = cli("promote", "kept", "--candidates", "2", "--reseeds", "1", "--format", "json")
    assert code == 0, err
    again = json.loads(out)
    assert again["compute_s"] == 0 and again["trial_id"] == second["trial_id"]
    assert err.count("(recorded)") == 2, err
    parent = tracking.parent_runs(store, "kept")[0]
    reseeds = store.client.search_runs([parent.info.experiment_id], "tags.`hpsearch.kind` = 'reseed'")
    assert len(reseeds) == 2 and {r.info.status for r in reseeds} == {"FINISHED"}
    assert next(c for c in again["candidates"] if c["chosen"])["values"][1] != PENALTY  # the same evidence

    # Its own checkpoint deleted (as keep_checkpoints does): the retraining's stands in, and says so.
    shutil.rmtree(Path(runs[second["trial_id"]]["trial_dir"]))
    code, out, err = cli("promote", "kept", "--candidates", "2", "--reseeds", "1", "--format", "json")
    assert code == 0, err
    stood_in = json.loads(out)
    assert stood_in["trial_id"] == second["trial_id"]
    retrained = next(r for r in reseeds if r.data.tags["hpsearch.reseed_of"] == second["trial_id"])
    assert store.client.get_model_version("kept", str(stood_in["version"])).run_id == retrained.info.run_id
    assert "own checkpoint" in err and "keep_checkpoints" in err

    # A plain trainable cannot be folded, and a model without held-out predictions cannot join an ensemble:
    # one line each, before anything trains.
    for flags, says in (
        (["--candidates", "2", "--folds", "3"], "cannot be cross-validated"),
        (["--ensemble"], "has no held-out predictions"),
    ):
        code, out, err = cli("promote", "kept", *flags)
        assert code == 2 and says in err and len(err.splitlines()) == 1, err
    assert len(store.client.search_runs([parent.info.experiment_id], "tags.`hpsearch.kind` = 'reseed'")) == 2


def test_a_generator_cannot_be_ensembled():
    from search.review._ensemble import refuse
    from studies import UserError
    from trainables import get_trainable

    with pytest.raises(UserError, match="--ensemble: trainable digits-dcgan has no held-out predictions"):
        refuse(get_trainable("digits-dcgan"), "val_fid", 5)


def test_a_promotion_killed_part_way_leaves_nothing_running_and_runs_again(tmp_path, monkeypatch):
    """SIGKILL mid-promotion (the whole process group: its local Ray too), then SIGTERM mid-promotion: no
    retraining run is left RUNNING once the next promotion starts, the first exits 130, and the promotion that
    runs to the end reuses what the killed ones recorded, each retraining once."""
    import signal
    import time

    import tracking
    from tests.conftest import REPO, run_cli, spawn_cli

    home = tmp_path / "home"
    monkeypatch.setenv("HPSEARCH_HOME", str(home))
    study = write_study(
        tmp_path / "killed.yaml",
        f"""\
        name: killed
        trainable: tests.clocked:CLOCKED
        metric: loss
        mode: min
        space:
          x: {{type: float, low: -1.0, high: 1.0}}
        fixed: {{fail_file: "{tmp_path / "no-fail"}", sleep: 1.5}}
        trials: 2
        asha: {{max_t: 2, grace_period: 2}}
        max_concurrent: 2
        """,
    )
    api.run(str(study), out=io.StringIO())
    store = tracking.Store()
    parent = tracking.parent_runs(store, "killed")[0]

    def reseeds():
        return store.client.search_runs([parent.info.experiment_id], "tags.`hpsearch.kind` = 'reseed'")

    def promote_until(sig, more: int):
        """Start a promotion, and send it `sig` once `more` retrainings more than before are recorded."""
        finished = sum(r.info.status == "FINISHED" for r in reseeds()) + more
        proc = spawn_cli("promote", "killed", "--candidates", "2", "--reseeds", "3", cwd=REPO)
        try:
            deadline = time.monotonic() + 240
            while sum(r.info.status == "FINISHED" for r in reseeds()) < finished:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.3)
            (os.killpg if sig == signal.SIGKILL else os.kill)(proc.pid, sig)
            return proc.wait(timeout=60), proc.stdout.read()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)

    code, _ = promote_until(signal.SIGKILL, 1)
    assert code == -signal.SIGKILL
    code, out = promote_until(signal.SIGTERM, 1)
    assert code == 130 and "hpsearch: error: interrupted" in out, out
    assert "RUNNING" not in {r.info.status for r in reseeds()}  # the second closed what the kill left open
    kept = {r.info.run_id for r in reseeds() if r.info.status == "FINISHED"}
    done = run_cli("promote", "killed", "--candidates", "2", "--reseeds", "3", cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("(recorded)") == len(kept) >= 2
    finished = [r for r in reseeds() if r.info.status == "FINISHED"]
    assert len(finished) == 6 and kept <= {r.info.run_id for r in finished}
    names = [r.info.run_name for r in finished]
    assert len(set(names)) == 6  # each retraining once
    assert "RUNNING" not in {r.info.status for r in reseeds()}


def test_among_tied_candidates_those_whose_checkpoint_is_kept_are_retrained(tmp_path, monkeypatch, cli):
    """Four trials of one configuration tie; the sweep keeps two checkpoints, breaking the tie in its own order
    (start order), where `results` lists tied trials by id. The two candidates are the two kept trials, so
    neither's own checkpoint is said to be gone."""
    import json

    import tracking

    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    study = write_study(
        tmp_path / "tied.yaml",
        f"""\
        name: tied
        trainable: tests.clocked:CLOCKED
        metric: loss
        mode: min
        space:
          x: {{type: categorical, choices: [0.5]}}
        fixed: {{fail_file: "{tmp_path / "no-fail"}"}}
        trials: 4
        asha: {{max_t: 2, grace_period: 2}}
        keep_checkpoints: 2
        max_concurrent: 2
        """,
    )
    api.run(str(study), out=io.StringIO())
    store = tracking.Store()
    rows = tracking.trial_rows(store, tracking.parent_runs(store, "tied")[0])
    assert len({r["metric"] for r in rows}) == 1  # a four-way tie
    kept = {r["trial_id"] for r in rows if list(Path(r["trial_dir"]).glob("checkpoint_*/checkpoint.pt"))}
    assert len(kept) == 2
    code, out, err = cli("promote", "tied", "--candidates", "2", "--reseeds", "1", "--format", "json")
    assert code == 0, err
    info = json.loads(out)
    assert {c["trial_id"] for c in info["candidates"]} == kept and "is gone" not in err, err
