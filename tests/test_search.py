"""The search machinery on a trainable that costs nothing: samplers, conditional spaces, warm starts,
progress output. Real Ray (one local instance for the module), real Optuna journals, real MLflow."""

import io
import json

import optuna
import pytest
import yaml

from search import api
from search.engine._progress import Progress
from studies import STATES, StudySummary

BASE = {
    "trainable": "tests.quad:train",
    "metric": "loss",
    "mode": "min",
    "space": {"x": {"type": "float", "low": -1.0, "high": 1.0}, "n": {"type": "int", "low": 0, "high": 3}},
    "trials": 4,
    "asha": {"max_t": 2, "grace_period": 2},
    "max_concurrent": 2,
}


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))

    def write(name, **fields):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**BASE, "name": name, **fields}, sort_keys=False))
        return str(path)

    return write


def optuna_trials(home, name):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(home / "optuna" / f"{name}.journal"))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).trials


SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
}


def count_samplers(monkeypatch) -> list[type]:
    """The class of each sampler Optuna asks for a trial's relative (joint) sample, one entry per trial.

    Optuna asks once per trial, in this process (Tune's searcher runs in the driver): the classes say which
    sampler the sweep really used, which a silent fallback to random sampling would change."""
    asked = []
    for cls in SAMPLERS.values():
        own = cls.__dict__.get("sample_relative")
        if own is not None:
            monkeypatch.setattr(cls, "sample_relative", _counted(own, cls, asked))
    return asked


@pytest.fixture(scope="module")
def tpe(tmp_path_factory):
    """The one TPE sweep of BASE (study `s-tpe`) that the sampler, `show` and warm-start tests all read."""
    root = tmp_path_factory.mktemp("tpe")
    path = root / "s-tpe.yaml"
    path.write_text(yaml.safe_dump({**BASE, "name": "s-tpe", "sampler": "tpe"}, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPSEARCH_HOME", str(root / "home"))
        asked = count_samplers(mp)
        outcome = api.run(str(path), out=io.StringIO())
    return {"home": root / "home", "outcome": outcome, "asked": asked}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_each_sampler_runs_a_tiny_sweep(sampler, study, tmp_path, monkeypatch, request):
    if sampler == "tpe":
        swept = request.getfixturevalue("tpe")
        monkeypatch.setenv("HPSEARCH_HOME", str(swept["home"]))
        outcome, asked, home = swept["outcome"], swept["asked"], swept["home"]
    else:
        asked, home = count_samplers(monkeypatch), tmp_path / "home"
        outcome = api.run(study(f"s-{sampler}", sampler=sampler), out=io.StringIO())
    assert outcome.exit_code == 0
    assert asked == [SAMPLERS[sampler]] * 4, asked
    frame = api.results(f"s-{sampler}")
    assert len(frame) == 4 and set(frame["state"]) == {"completed"}
    trials = optuna_trials(home, f"s-{sampler}")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert all(-1.0 <= t.params["x"] <= 1.0 and t.params["n"] in range(4) for t in trials)
    if sampler == "cmaes":  # CMA-ES samples once one trial has completed, and records its generation
        assert any("cma:generation" in t.system_attrs for t in trials), [t.system_attrs for t in trials]
    if sampler == "qmc":  # QMC numbers its points in the study; the first trial, before any space is known, is
        # Optuna's independent sample, and the next three took points 0..2 of the sequence
        assert [v for k, v in study_attrs(home, "s-qmc").items() if k.startswith("qmc:")] == [2]


def _counted(sample_relative, cls, asked):
    def counted(self, *args, **kwargs):
        if type(self) is cls:  # a subclass's own call is counted under its own class
            asked.append(cls)
        return sample_relative(self, *args, **kwargs)

    return counted


def study_attrs(home, name) -> dict:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(home / "optuna" / f"{name}.journal"))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    return storage.get_study_system_attrs(storage.get_study_id_from_name(summary.study_name))


def test_grid_sampler_covers_the_grid_once(study, tmp_path):
    space = {
        "x": {"type": "float", "low": -1.0, "high": 1.0, "grid_points": 3},
        "n": {"type": "int", "low": 0, "high": 3, "values": [0, 3]},
    }
    out = io.StringIO()
    api.run(study("s-grid", sampler="grid", space=space, trials=10), out=out)
    assert "the grid has 6 points, so 6 trials instead of 10" in out.getvalue()
    points = sorted((r["x"], r["n"]) for r in api.results("s-grid")["params"])
    assert points == sorted((x, n) for x in (-1.0, 0.0, 1.0) for n in (0, 3))


def test_tpe_under_asha_samples_from_the_ranked_view_once_its_random_start_is_over(study, tmp_path):
    """A real sweep past TPE's 10 random trials: the 11th on are TPE's own multivariate samples, fitted on the
    ranked view (search/sampling/_ranking.py), whose constant-liar note reaches the real storage; states stay true."""
    asha = {"max_t": 9, "grace_period": 1, "reduction_factor": 3}
    outcome = api.run(study("s-ranked", trials=13, max_concurrent=1, asha=asha), out=io.StringIO())
    assert outcome.exit_code == 0
    trials = optuna_trials(tmp_path / "home", "s-ranked")
    assert [t.number for t in trials if "tpe:relative_params:0" in t.system_attrs] == [10, 11, 12]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(complete) + len(pruned) == 13 and pruned
    assert all(max(t.intermediate_values) == 9 for t in complete)
    assert all(max(t.intermediate_values) in (1, 3) for t in pruned)


def test_without_asha_each_trial_runs_its_own_searched_epochs_and_completes(study, tmp_path):
    """`asha: off`: no pruning; a trial with 2 epochs is as COMPLETE as one with 4 (its own length)."""
    space = {**BASE["space"], "epochs": {"type": "int", "low": 2, "high": 4}}
    outcome = api.run(study("noasha", space=space, asha=False, trials=4, sampler="random"), out=io.StringIO())
    assert outcome.counts == {"completed": 4, "pruned": 0, "stopped": 0, "failed": 0}
    rows = api.results("noasha").to_dict("records")
    assert all(r["epochs"] == r["params"]["epochs"] for r in rows) and len({r["epochs"] for r in rows}) > 1
    trials = optuna_trials(tmp_path / "home", "noasha")
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert all(len(t.intermediate_values) == t.params["epochs"] for t in trials)


def test_conditional_parameter_exists_only_where_it_applies(study, tmp_path):
    space = {
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"optimizer": "sgd"}},
        "x": {"type": "float", "low": -1.0, "high": 1.0},
    }
    api.run(study("cond", space=space, trials=8, sampler="random"), out=io.StringIO())
    params = list(api.results("cond")["params"])
    assert {p["optimizer"] for p in params} == {"adam", "sgd"}
    for p in params:
        assert ("momentum" in p) == (p["optimizer"] == "sgd"), p
    for t in optuna_trials(tmp_path / "home", "cond"):
        assert ("momentum" in t.params) == (t.params["optimizer"] == "sgd")


def test_warm_start_enqueues_the_best_configurations_fitted_to_the_new_space(study, tpe, monkeypatch):
    monkeypatch.setenv("HPSEARCH_HOME", str(tpe["home"]))  # the source: the module's TPE sweep of BASE's space
    best = [r for r in api.results("s-tpe")["params"]][:2]
    # The new space: a narrower x (clipping), no n (dropped).
    out = io.StringIO()
    api.run(
        study("warm-dst", space={"x": {"type": "float", "low": 0.0, "high": 0.2}}, trials=3),
        warm_start="s-tpe",
        warm_count=2,
        out=out,
    )
    text = out.getvalue()
    assert "warm start from s-tpe: 2 configuration(s) enqueued" in text
    assert "warm start: dropped n: not in this study's space (configuration 1, 2)" in text
    first_two = sorted(optuna_trials(tpe["home"], "warm-dst"), key=lambda t: t.number)[:2]
    for trial, source in zip(first_two, best):
        assert trial.params["x"] == min(max(source["x"], 0.0), 0.2)
        assert "n" not in trial.params
    clipped = [str(n) for n, source in enumerate(best, 1) if not 0.0 <= source["x"] <= 0.2]
    said = [line for line in text.splitlines() if "clipped" in line]
    assert said == ([f"warm start: clipped x into 0.0..0.2 (configuration {', '.join(clipped)})"] if clipped else [])


def test_warm_start_from_a_study_without_records_is_a_user_error(study, cli):
    code, _, err = cli("run", study("w"), "--warm-start", "nothing-here")
    assert code == 2 and "no records for study 'nothing-here'" in err


def test_progress_in_a_log_is_one_line_per_event_and_bounded():
    summary = StudySummary("s", "loss", {s: 0 for s in STATES}, 0.0, trials=500)
    out = io.StringIO()
    progress = Progress(summary, out, tty=False, heartbeat_s=3600)
    for i in range(500):
        summary.counts["completed"] += 1
        progress.event(f"trial {i} completed")
        for _ in range(20):
            progress.tick()  # Tune calls this every loop step: it must not print each time
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 500 and "\r" not in out.getvalue()
    assert lines[-1].startswith("[500/500] trial 499 completed | 0 running, 500 completed, 0 pruned, 0 stopped")


def test_progress_on_a_terminal_redraws_one_status_line_in_place():
    summary = StudySummary("s", "loss", {s: 0 for s in STATES}, 0.0, trials=5, best_value=0.5, best_trial="t1")
    out = io.StringIO()
    progress = Progress(summary, out, tty=True)
    for _ in range(1000):
        progress.tick()
    progress.close()
    text = out.getvalue()
    assert text.count("\r\x1b[2K") <= 3  # one draw (the first), then throttled to once a second; then cleared
    assert "best loss=0.5000 (trial t1)" in text and "\n" not in text


def test_summary_eta_uses_pace_and_hours():
    summary = StudySummary(
        "s",
        "loss",
        {"running": 2, "completed": 4, "pruned": 4, "failed": 0},
        100.0,
        trials=20,
        hours=None,
        concurrency=2,
        mean_trial_s=10.0,
    )
    assert summary.eta_s() == pytest.approx(10.0 * (12 - 2 / 2) / 2)  # 12 left, 2 of them half done
    summary.hours = 100 / 3600 + 5 / 3600  # 5 s left in the budget
    assert summary.eta_s() == pytest.approx(5.0)


def test_show_reports_what_results_hold(tpe, cli, monkeypatch):
    monkeypatch.setenv("HPSEARCH_HOME", str(tpe["home"]))
    code, out, err = cli("show", "s-tpe", "--format", "json")
    assert code == 0, err
    shown = json.loads(out)
    frame = api.results("s-tpe")
    assert shown["counts"]["completed"] == (frame["state"] == "completed").sum() == 4
    assert shown["best_trial"] == frame.iloc[0]["trial_id"] and shown["status"] == "FINISHED"
    code, out, _ = cli("show", "s-tpe")
    assert code == 0 and "0 running, 4 completed, 0 pruned, 0 stopped, 0 failed" in out and "0 of 4 trials left" in out


def test_faulty_trials_do_not_end_the_sweep_and_carry_their_cause(study, tmp_path, cli):
    """A NaN loss (no validation metric in its last report), an exception, a CUDA out-of-memory error, a
    worker process that dies, and a failure that a retry (max_failures: 1, from the last checkpoint) gets
    past: the sweep finishes, and MLflow, Optuna and `hpsearch logs` all say what happened to each trial."""
    space = {"fault": {"type": "categorical", "choices": ["none", "nan", "raise", "oom", "flaky", "die"]}}
    outcome = api.run(
        study(
            "faults",
            trainable="tests.faulty:train",
            space=space,
            sampler="grid",
            trials=6,
            fixed={"marker_dir": str(tmp_path)},
            max_failures=1,
            asha={"max_t": 3, "grace_period": 3},
        ),
        out=io.StringIO(),
    )
    assert outcome.exit_code == 0 and outcome.counts == {"completed": 2, "pruned": 0, "stopped": 0, "failed": 4}
    rows = {r["params"]["fault"]: r for r in api.results("faults").to_dict("records")}
    assert rows["none"]["state"] == "completed" and rows["none"]["epochs"] == 3
    assert rows["flaky"]["state"] == "completed" and rows["flaky"]["epochs"] == 3  # retried, then finished
    assert rows["nan"]["state"] == "failed" and rows["nan"]["reason"] == "diverged"
    assert rows["raise"]["state"] == "failed" and "injected failure in trial code" in rows["raise"]["reason"]
    assert rows["oom"]["state"] == "failed" and rows["oom"]["reason"].startswith("oom: ")
    assert rows["die"]["state"] == "failed" and rows["die"]["reason"].startswith("worker died: ")
    states = {t.params["fault"]: t.state for t in optuna_trials(tmp_path / "home", "faults")}
    ok, fail = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    assert states == {"none": ok, "flaky": ok, "nan": fail, "raise": fail, "oom": fail, "die": fail}

    code, out, err = cli("logs", "faults", rows["raise"]["trial_id"])
    assert code == 0, err
    assert "faulty trial with fault=raise" in out and "ValueError: injected failure in trial code" in out
    code, _, err = cli("logs", "faults", "nosuchtrial")
    assert code == 2 and "has no trial 'nosuchtrial'" in err


def test_an_out_of_memory_trial_is_retried_with_half_its_batch_size(study, tmp_path):
    """CUDA out-of-memory at batch sizes above 16: each such trial fails with reason `oom`, and its
    configuration is queued again with half the batch size (while that stays in the searched range)."""
    space = {"batch_size": {"type": "int", "low": 8, "high": 64}}
    api.run(
        study(
            "oomhalf",
            trainable="tests.faulty:train",
            space=space,
            sampler="random",
            trials=8,
            max_concurrent=1,
            fixed={"marker_dir": str(tmp_path), "fault": "oom_if_big"},
            asha={"max_t": 2, "grace_period": 2},
        ),
        out=io.StringIO(),
    )
    rows = api.results("oomhalf").to_dict("records")
    failed = [r for r in rows if r["state"] == "failed"]
    assert failed and all(r["reason"].startswith("oom: ") for r in failed)
    sizes = [r["params"]["batch_size"] for r in rows]
    for r in failed:
        half = r["params"]["batch_size"] // 2
        assert f"(retrying with batch_size={half})" in r["reason"]
    # One trial at a time: each failure's retry is the very next trial, but a failure in the last trial of the
    # budget (8) has no trial left to run its retry in.
    # The retry of a failure in the last trial stays queued in Optuna (WAITING, its configuration in
    # `fixed_params`): the budget has no trial left for it.
    everything = sorted(optuna_trials(tmp_path / "home", "oomhalf"), key=lambda t: t.number)
    trials = [t for t in everything if t.state != optuna.trial.TrialState.WAITING]
    queued = [t for t in everything if t.state == optuna.trial.TrialState.WAITING]
    assert len(trials) == len(rows) == 8 and sorted(t.params["batch_size"] for t in trials) == sorted(sizes)
    assert not queued or (
        len(queued) == 1
        and trials[-1].state == optuna.trial.TrialState.FAIL
        and queued[0].system_attrs["fixed_params"]["batch_size"] == trials[-1].params["batch_size"] // 2
    ), [(t.state, t.params, t.system_attrs) for t in everything]
    for before, after in zip(trials, trials[1:]):
        assert (before.state == optuna.trial.TrialState.FAIL) == (before.params["batch_size"] > 16)
        if before.state == optuna.trial.TrialState.FAIL:
            assert after.params["batch_size"] == before.params["batch_size"] // 2, (before.params, after.params)
    retried = [r["params"]["batch_size"] // 2 for r in failed]
    assert any(r["state"] == "completed" and r["params"]["batch_size"] in retried for r in rows)


def test_a_failed_trials_reason_is_its_exception_line_not_a_hint_after_it():
    from search.engine._states import classify_error

    cuda = (
        "ray::ImplicitFunc.train() (pid=1967)\ntorch.AcceleratorError: Caught AcceleratorError in DataLoader worker "
        'process 0.\nOriginal Traceback (most recent call last):\n  File "w.py", line 358, in _worker_loop\n'
        "torch.AcceleratorError: CUDA error: initialization error\nSearch for `cudaErrorInitializationError' in "
        "https://docs.nvidia.com for more information.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
        "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
    )
    assert classify_error(cuda) == "error: torch.AcceleratorError: CUDA error: initialization error"
    assert classify_error('Traceback\n  File "t.py", line 3\n    raise ValueError("x: y")\nValueError: x: y') == (
        "error: ValueError: x: y"
    )
    assert classify_error("no exception line at all") == "error: no exception line at all"
