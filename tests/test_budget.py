"""ASHA on seconds of training (`asha: {budget: seconds, ...}`): the spec, the trial's clock, the states, a real
sweep whose configurations cost different times per epoch, and the rungs a resume rebuilds from the journal."""

import io
import json
import random
import time
from pathlib import Path

import optuna
import pytest
import ray
import yaml

import tracking
from search import api
from search.engine._states import TrialProgress
from search.scheduling._ray_reporter import TrainClock
from studies import UserError, parse_spec, spec_changes, spec_text
from studies.words import COMPLETED, PRUNED
from tests.conftest import REPO, run_cli, sigterm, spawn_cli
from trainables import TRAIN_SECONDS, MemoryReporter

BASE = {"name": "b", "trainable": "tests.quad:train", "metric": "loss", "mode": "min"}
SPACE = {"x": {"type": "float", "low": -1.0, "high": 1.0}}


def spec(**asha):
    return parse_spec({**BASE, "space": SPACE, "asha": asha}, "b.yaml")


@pytest.mark.parametrize(
    "asha, says",
    [
        ({"budget": "hours", "max_t": 10}, "asha.budget: Input should be 'epochs' or 'seconds'"),
        ({"budget": "seconds", "max_t": 120, "grace_period": 5}, "asha: max_epochs is required with budget: seconds"),
        ({"max_t": 10, "max_epochs": 5}, "asha: max_epochs applies only with budget: seconds"),
        ({"max_t": 2.5}, "asha.max_t: a whole number of epochs >= 1 with budget: epochs, not 2.5"),
        ({"max_t": 10, "grace_period": 0.5}, "asha.grace_period: a whole number of epochs >= 1 with budget: epochs"),
        ({"budget": "seconds", "max_t": 0, "max_epochs": 5}, "asha.max_t: Input should be greater than 0"),
        ({"budget": "seconds", "max_t": 60, "grace_period": -1, "max_epochs": 5}, "asha.grace_period: Input should be"),
        ({"budget": "seconds", "max_t": "long", "max_epochs": 5}, "asha.max_t: a finite number (epochs, or seconds"),
        ({"budget": "seconds", "max_t": float("inf"), "max_epochs": 5}, "asha.max_t: a finite number"),
        ({"budget": "seconds", "max_t": 60, "max_epochs": 0}, "asha.max_epochs: Input should be greater than or equal"),
        ({"budget": "seconds", "max_t": 60, "max_epochs": 2.5}, "asha.max_epochs: Input should be a valid integer"),
        ({"budget": "seconds", "max_t": 5, "grace_period": 6, "max_epochs": 9}, "asha: grace_period (6) must be <="),
    ],
)
def test_every_refusal_is_one_line_naming_the_field_and_what_is_valid(asha, says):
    with pytest.raises(UserError) as caught:
        spec(**asha)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("b.yaml: ") and says in message, message


def test_seconds_take_fractions_and_set_every_trials_epochs_to_max_epochs():
    timed = spec(budget="seconds", max_t=1.5, grace_period=0.25, reduction_factor=2, max_epochs=40)
    assert (timed.asha.max_t, timed.asha.grace_period, timed.max_t, timed.max_seconds) == (1.5, 0.25, 40, 1.5)
    epochs = spec(max_t=20.0, grace_period=2)
    assert (epochs.asha.max_t, epochs.max_t, epochs.max_seconds) == (20, 20, None)
    assert isinstance(epochs.asha.max_t, int)  # 20.0 epochs are 20, as before seconds existed
    with pytest.raises(UserError, match="it is set by asha.max_t .asha.max_epochs with budget: seconds"):
        parse_spec({**BASE, "space": SPACE, "fixed": {"epochs": 3}}, "b.yaml")


def test_an_epochs_study_is_written_as_before_so_its_sweeps_resume_and_a_changed_budget_is_named():
    epochs, timed = spec(max_t=8, grace_period=2), spec(budget="seconds", max_t=8, grace_period=2, max_epochs=30)
    asha = yaml.safe_load(spec_text(epochs))["asha"]
    assert asha == {"max_t": 8, "grace_period": 2, "reduction_factor": 3.0}  # no budget, no max_epochs
    assert yaml.safe_load(spec_text(timed))["asha"] == {**asha, "budget": "seconds", "max_epochs": 30}
    assert spec_changes(spec_text(epochs), timed) == [
        "asha.budget: '(unset)' -> 'seconds'",
        "asha.max_epochs: '(unset)' -> 30",
    ]
    assert spec_changes(spec_text(timed), timed) == []


def test_a_trial_at_max_t_seconds_completed_below_it_was_pruned_and_max_epochs_still_completes():
    progress = TrialProgress("loss", "min")
    progress.update({"epoch": 3, TRAIN_SECONDS: 1.2, "loss": 0.5})
    assert progress.outcome(False, 40, max_seconds=1.6) == (PRUNED, "asha")
    assert progress.outcome(False, 40, halted="out of hours", max_seconds=1.6)[0] == "stopped"
    progress.update({"epoch": 4, TRAIN_SECONDS: 1.61, "loss": 0.4})
    assert progress.outcome(False, 40, max_seconds=1.6) == (COMPLETED, None)  # 4 of 40 epochs: ASHA's max_t
    assert progress.outcome(False, 40) == (PRUNED, "asha")  # under epochs the same trial was cut short
    progress.update({"epoch": 40, TRAIN_SECONDS: 1.0, "loss": 0.3})
    assert progress.outcome(False, 40, max_seconds=1.6) == (COMPLETED, None)  # its epoch cap first


def test_the_clock_leaves_out_the_time_a_report_waits_and_carries_a_checkpoints_seconds():
    clock = TrainClock()
    time.sleep(0.05)
    with clock.paused():  # as tune.report waits for the driver
        time.sleep(0.3)
    assert 0.05 <= clock.seconds() < 0.2
    clock.carry(10.0)
    assert 10.05 <= clock.seconds() < 10.2
    with pytest.raises(ValueError, match="reserved"):
        MemoryReporter().report(1, {TRAIN_SECONDS: 1.0})  # the engine's, not a trainable's metric


def test_check_says_what_a_time_budget_buys():
    from search.engine._check import _estimate

    timed = parse_spec(
        {**BASE, "space": SPACE, "hours": 1, "asha": {"budget": "seconds", "max_t": 60, "max_epochs": 50}}, "b.yaml"
    )
    lines = _estimate(timed, n_train=1000, batch=100, step_s=0.1).lines  # 1 s per epoch: 60 s is 60 > 50 epochs
    assert "a trial stops at 60 s or 50 epochs, here after 50.0 epochs (50.0 s)" in lines[1]
    assert "to let time decide here too, raise max_epochs to about 60" in lines[2]
    assert "s of training per trial on average" in lines[3]
    slow = _estimate(timed, n_train=1000, batch=100, step_s=0.3).lines  # 3 s per epoch: 60 s come first
    assert "here after 20.0 epochs (60.0 s)" in slow[1] and "raise max_epochs" not in " ".join(slow)
    epochs = parse_spec({**BASE, "space": SPACE, "hours": 1, "asha": {"max_t": 50}}, "b.yaml")
    assert "epochs per trial on average" in _estimate(epochs, 1000, 100, 0.1).lines[1]


# ---- a real sweep: epochs of width 6 cost 6 times those of width 1 ----
RUNGS, MAX_T, MAX_EPOCHS = (0.4, 0.8), 1.6, 40  # rungs at 0.4 and 0.8 s: reduction_factor 2
SWEEP = {
    **BASE,
    "name": "timed",
    "space": {"width": {"type": "categorical", "choices": [1, 6]}, **SPACE},
    "fixed": {"sleep": 0.1},  # seconds per epoch and unit of width: 0.1 s or 0.6 s an epoch
    "trials": 10,
    "max_concurrent": 2,
    "sampler": "random",
    "seed": 3,
    "asha": {"budget": "seconds", "max_t": MAX_T, "grace_period": RUNGS[0], "reduction_factor": 2},
}
SWEEP["asha"]["max_epochs"] = MAX_EPOCHS


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    home = tmp_path_factory.mktemp("budget") / "home"
    path = home.parent / "timed.yaml"
    path.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPSEARCH_HOME", str(home))
        outcome = api.run(str(path), out=io.StringIO())
        assert outcome.exit_code == 0
        yield home, api.results("timed")
    if ray.is_initialized():
        ray.shutdown()


def histories(home, frame) -> dict[str, dict[int, float]]:
    """Trial id -> epoch -> train_seconds, as MLflow holds them."""
    client = tracking.Store(home=home).client
    return {
        row["trial_id"]: {m.step: m.value for m in client.get_metric_history(row["run_id"], TRAIN_SECONDS)}
        for _, row in frame.iterrows()
    }


def crossed(seconds: dict[int, float], mark: float) -> int | None:
    """The first epoch at which a trial's training time reached `mark` (what ASHA judges it on there)."""
    return next((epoch for epoch in sorted(seconds) if seconds[epoch] >= mark), None)


def assert_stopped_in_seconds(row: dict, seconds: dict[int, float], asha: dict) -> None:
    """A trial's train_seconds (epoch -> s) rose every epoch, and ASHA stopped it on its first epoch past max_t
    seconds (completed, well before max_epochs) or past a rung (pruned): its epochs followed the seconds."""
    assert sorted(seconds) == list(range(1, row["epochs"] + 1)), (row, seconds)  # each epoch once
    assert all(seconds[e] < seconds[e + 1] for e in range(1, row["epochs"])), (row, seconds)
    last, before = seconds[row["epochs"]], seconds.get(row["epochs"] - 1, 0.0)
    if row["state"] == COMPLETED:
        assert before < asha["max_t"] <= last and row["epochs"] < asha["max_epochs"], (row, seconds)
    else:
        rungs, rung = [], asha["grace_period"]
        while rung < asha["max_t"]:
            rungs, rung = [*rungs, rung], rung * asha["reduction_factor"]
        assert row["state"] == PRUNED and any(before < r <= last for r in rungs), (row, seconds)


def test_ashas_rungs_count_seconds_so_slow_configurations_get_fewer_epochs(timed):
    home, frame = timed
    times = histories(home, frame)
    rows = frame.to_dict("records")
    assert {r["params"]["width"] for r in rows} == {1, 6} and {r["state"] for r in rows} == {COMPLETED, PRUNED}
    for row in rows:
        seconds = times[row["trial_id"]]
        assert_stopped_in_seconds(row, seconds, SWEEP["asha"])
        assert row["train_seconds"] == pytest.approx(seconds[row["epochs"]], abs=0.01)
    for mark in (*RUNGS, MAX_T):
        reached = {w: [crossed(times[r["trial_id"]], mark) for r in rows if r["params"]["width"] == w] for w in (1, 6)}
        slow, fast = [e for e in reached[6] if e], [e for e in reached[1] if e]
        if slow and fast:
            assert max(slow) < min(fast), (mark, reached)
    completed_epochs = {r["params"]["width"]: r["epochs"] for r in rows if r["state"] == COMPLETED}
    print(f"epochs at the same {MAX_T} s, by width: {completed_epochs}")


def test_optuna_holds_the_states_and_each_epochs_seconds_beside_its_value(timed):
    home, frame = timed
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(home / "optuna" / "timed.journal"))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    times = histories(home, frame)
    states = dict(zip(frame["trial_id"], frame["state"]))
    want = {COMPLETED: optuna.trial.TrialState.COMPLETE, PRUNED: optuna.trial.TrialState.PRUNED}
    from search.sampling._searcher import RAY_TRIAL_ID, epoch_seconds

    assert len(study.trials) == len(frame)
    for trial in study.trials:
        trial_id = trial.user_attrs[RAY_TRIAL_ID]
        assert trial.state == want[states[trial_id]]
        assert epoch_seconds(trial) == pytest.approx(times[trial_id])  # every epoch, the same as MLflow's
        assert set(epoch_seconds(trial)) == set(trial.intermediate_values)


def test_results_and_show_say_the_budget_is_in_seconds(timed, cli, monkeypatch):
    home, frame = timed
    monkeypatch.setenv("HPSEARCH_HOME", str(home))
    code, out, _ = cli("results", "timed")
    assert code == 0 and out.splitlines()[0].split()[:6] == [
        "rank",
        "trial_id",
        "state",
        "loss",
        "epochs",
        "train_seconds",
    ]
    code, out, _ = cli("show", "timed")
    assert code == 0 and f"asha: rungs in seconds of each trial's own training: max_t {MAX_T} s" in out, out
    assert f"at most {MAX_EPOCHS} epochs" in out
    parent = tracking.parent_runs(tracking.Store(home=home), "timed")[0]
    assert parent.data.params["budget"] == "seconds" and parent.data.params["max_epochs"] == str(MAX_EPOCHS)
    assert json.loads(cli("results", "timed", "--format", "json")[1])[0]["train_seconds"] > 0


# ---- resume: the rungs come back in seconds, and a continued trial's clock goes on from its checkpoint ----


def live_timed_sweep(trials: int = 24, seed: int = 0):
    """Trials of different costs per epoch run interleaved through a live seconds ASHA and a StudySearch, told as
    Ray tells them (the stopping result goes to on_trial_complete). Some are still running at the 'crash'."""
    from optuna.distributions import FloatDistribution
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    from search.sampling._searcher import StudySearch
    from search.scheduling._asha_state import _Trial, make_asha

    rng = random.Random(seed)
    asha = spec(budget="seconds", max_t=9.0, grace_period=1.0, reduction_factor=3, max_epochs=40).asha
    scheduler = make_asha(asha, "score", "max")
    space = {"q": FloatDistribution(0, 1), "cost": FloatDistribution(0.2, 2.0)}  # seconds per epoch
    sampler = optuna.samplers.RandomSampler(seed=seed)
    searcher = StudySearch(
        space=space, metric="score", mode="max", sampler=sampler, max_t=40, study_seed=0, max_seconds=9.0
    )
    running: dict[str, tuple[dict, int, float]] = {}
    for i in range(trials):
        running[f"t{i}"] = (searcher.suggest(f"t{i}"), 0, 0.0)
        scheduler.on_trial_add(None, _Trial(f"t{i}"))
        for tid in rng.sample(sorted(running), k=min(3, len(running))):
            config, epoch, seconds = running[tid]
            epoch, seconds = epoch + 1, seconds + config["cost"] * rng.uniform(0.9, 1.1)
            result = {"epoch": epoch, TRAIN_SECONDS: seconds, "score": config["q"] * (1 - 0.5 / epoch)}
            if scheduler.on_trial_result(None, _Trial(tid), result) == TrialScheduler.STOP:
                scheduler.on_trial_complete(None, _Trial(tid), result)
                searcher.on_trial_complete(tid, result)
                del running[tid]
            else:
                searcher.on_trial_result(tid, result)
                running[tid] = (config, epoch, seconds)
    return scheduler, searcher._ot_study, sorted(running), asha


def timed_decisions(scheduler, new: int = 12) -> list[str]:
    """What ASHA decides for new trials, each at its own cost per epoch: it depends on every rung."""
    from search.scheduling._asha_state import _Trial

    out = []
    for i in range(new):
        scheduler.on_trial_add(None, _Trial(f"new{i}"))
        for epoch in range(1, 41):
            result = {"epoch": epoch, TRAIN_SECONDS: epoch * (0.3 + 0.2 * (i % 4)), "score": (7 * i % new) / new}
            out.append(scheduler.on_trial_result(None, _Trial(f"new{i}"), result))
            if out[-1] == "STOP":
                break
    return out


def test_the_rungs_in_seconds_are_rebuilt_from_the_journal_as_the_live_asha_had_them():
    from search.scheduling._asha_state import _Trial, check_replay, make_asha, replay_rungs

    live, study, still_running, asha = live_timed_sweep()
    assert still_running
    ended = [t for t in study.trials if t.state.is_finished()]
    complete = [t for t in ended if t.state == optuna.trial.TrialState.COMPLETE]
    # At max_t seconds a trial completed, with fewer epochs the more each cost; the rest were pruned.
    assert complete and all(max(t.intermediate_values) < 40 for t in complete)
    assert len({max(t.intermediate_values) for t in complete}) > 1
    assert {t.state for t in ended} == {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    rebuilt = make_asha(asha, "score", "max")
    assert replay_rungs(rebuilt, study, "score") == sum(1 for t in study.trials if t.intermediate_values)
    assert rebuilt.debug_string().split("\n")[1:] == live.debug_string().split("\n")[1:]  # each rung's cutoff
    for tid in still_running:
        rebuilt.on_trial_add(None, _Trial(tid))
    live_decisions = timed_decisions(live)
    assert timed_decisions(rebuilt) == live_decisions
    assert timed_decisions(make_asha(asha, "score", "max")) != live_decisions  # empty rungs decide otherwise
    check_replay(asha, study, "score", "max")  # what a --resume checks first: nothing to say


def wait_for_a_survivor(home, name: str, epochs: int, timeout: float = 120) -> None:
    """Until a running trial of width 1 has checkpointed epoch `epochs` (read from MLflow and Ray's folders)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list((home / "ray").glob(f"{name}-*/hpsearch-logs/*.log")):  # MLflow's tables exist by now
            store = tracking.Store(home=home)
            runs = tracking.parent_runs(store, name)
            rows = tracking.trial_rows(store, runs[0]) if runs else []
            running = [Path(r["trial_dir"]) for r in rows if r["status"] == "RUNNING" and r["params"].get("width") == 1]
            # Ray keeps a trial's latest checkpoint only; quad checkpoints every epoch (its loss falls each one).
            if any(int(c.name.split("_")[1]) + 1 >= epochs for d in running for c in d.glob("checkpoint_*")):
                return
        time.sleep(0.3)
    raise AssertionError(f"no trial of width 1 got to epoch {epochs} in {timeout}s")


def test_sigterm_then_resume_continues_each_trials_seconds_from_its_checkpoint(tmp_path, monkeypatch):
    home, path = tmp_path / "home", tmp_path / "resumed.yaml"
    # Rungs at 0.4, 0.8 and 1.6 s; 0.2 s an epoch at width 1: past epoch 8 a trial is past every rung and runs
    # to epoch 16 (3.2 s), so one seen there is mid-way at the signal (the first trial always gets there).
    asha = {**SWEEP["asha"], "max_t": 3.2, "grace_period": 0.4}
    study = {**SWEEP, "name": "resumed", "fixed": {"sleep": 0.2}, "trials": 3, "seed": 5, "asha": asha}
    path.write_text(yaml.safe_dump(study))
    env = {"HPSEARCH_HOME": str(home)}
    proc = spawn_cli("run", path, cwd=REPO, env=env)
    try:
        wait_for_a_survivor(home, "resumed", epochs=9)
    finally:
        out = sigterm(proc)
    assert proc.returncode == 130, out
    resumed = run_cli("run", path, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    monkeypatch.setenv("HPSEARCH_HOME", str(home))
    results = api.results("resumed")
    times, frame = histories(home, results), results.to_dict("records")
    continued = [p for p in (home / "ray").glob("resumed-*/hpsearch-logs/*.log") if "resuming at" in p.read_text()]
    assert continued  # a trial went on from its checkpoint rather than from epoch 1
    assert len(frame) == 3 and {r["state"] for r in frame} <= {COMPLETED, PRUNED}
    for row in frame:  # a continued trial's clock went on from its checkpoint's seconds, never back to 0
        assert_stopped_in_seconds(row, times[row["trial_id"]], asha)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(home / "optuna" / "resumed.journal"))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    from search.sampling._searcher import epoch_seconds

    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert all(set(epoch_seconds(t)) == set(t.intermediate_values) for t in trials)
