"""Reads page through MLflow's results: with a page much smaller than the records, every row comes back once.

Real MLflow on the embedded sqlite store; tracking._runs.PAGE is made tiny so that each read takes many pages.
"""

import pytest

import tracking
from tracking import _runs
from tracking import tags as T

PAGE = 3


@pytest.fixture
def store(home, monkeypatch):
    monkeypatch.setattr(_runs, "PAGE", PAGE)
    return tracking.Store(None)


class Counting:
    """Wraps a client search method and records the max_results of each call (to prove the reads paged)."""

    def __init__(self, monkeypatch, client, name):
        self.calls = []
        search = getattr(client, name)

        def counted(*args, **kwargs):
            self.calls.append(kwargs.get("max_results"))
            return search(*args, **kwargs)

        monkeypatch.setattr(client, name, counted)


def _study(store, study, trials, kind="trial"):
    recorder = tracking.StudyRecorder(store, study, tags={"hpsearch.version": "test"})
    recorder.start({"trials": trials}, "name: x\n", run_name=f"{study}-run")
    for i in range(trials):
        trial = f"t{i:03d}"
        recorder.trial_started(trial, {"lr": 0.1 * (i + 1), "layers": i}, kind=kind)
        recorder.trial_result(trial, 1, {"score": float(i)})
        recorder.trial_ended(trial, "completed", {T.BEST_VALUE: float(i), T.EPOCHS: 1, T.BEST_EPOCH: 1})
    recorder.finish()
    return recorder.parent_id


def test_trial_rows_every_child_once(store, monkeypatch):
    parent_id = _study(store, "many", 3 * PAGE + 2)
    recorder = tracking.StudyRecorder(store, "many", tags={})
    recorder.attach(store.client.get_run(parent_id))  # promote's retrainings: children that are not trials
    for i in range(PAGE + 1):
        recorder.trial_started(f"reseed{i}", {"lr": 0.1}, kind="reseed")
        recorder.trial_ended(f"reseed{i}", "completed", {T.BEST_VALUE: 1.0})
    searches = Counting(monkeypatch, store.client, "search_runs")
    rows = tracking.trial_rows(store, store.client.get_run(parent_id))
    assert sorted(r["trial_id"] for r in rows) == [f"t{i:03d}" for i in range(3 * PAGE + 2)]
    assert len({r["run_id"] for r in rows}) == len(rows)
    assert {r["trial_id"]: r["metric"] for r in rows} == {f"t{i:03d}": float(i) for i in range(3 * PAGE + 2)}
    assert {r["trial_id"]: r["params"]["layers"] for r in rows} == {f"t{i:03d}": i for i in range(3 * PAGE + 2)}
    assert searches.calls == [PAGE] * 5  # 3 * PAGE + 2 trials and PAGE + 1 retrainings: 5 full pages


def test_parent_runs_and_recorded_studies_every_run_once(store, monkeypatch):
    made = {"alpha": 2 * PAGE + 1, "beta": PAGE, "gamma": 1}
    parents = {study: [_study(store, study, 1) for _ in range(n)] for study, n in made.items()}
    for i in range(PAGE + 1):  # more experiments than a page, some without any run
        store.experiment_id(f"empty{i}", create=True)
    deleted = _study(store, "beta", 1)
    store.client.delete_run(deleted)  # a deleted run is not counted, as before

    searches = Counting(monkeypatch, store.client, "search_runs")
    runs = tracking.parent_runs(store, "alpha")
    assert [r.info.run_id for r in runs] == parents["alpha"][::-1]  # newest first
    assert searches.calls == [PAGE] * 3
    assert [r.info.start_time for r in runs] == sorted((r.info.start_time for r in runs), reverse=True)
    assert [r.info.run_id for r in tracking.parent_runs(store, "beta")] == parents["beta"][::-1]

    latest = tracking.parent_runs(store, "alpha", limit=1)
    assert [r.info.run_id for r in latest] == [parents["alpha"][-1]]
    assert [r.info.run_id for r in tracking.parent_runs(store, "alpha", limit=PAGE + 1)] == parents["alpha"][
        : -PAGE - 2 : -1
    ]
    first = parents["alpha"][0]
    assert [r.info.run_id for r in tracking.parent_runs(store, "alpha", run_id=first)] == [first]
    assert tracking.parent_runs(store, "gamma", run_id=first) == []  # another study's run
    assert tracking.parent_runs(store, "beta", run_id=deleted) == []
    assert tracking.parent_runs(store, "alpha", run_id="x' or '1'='1") == []

    assert tracking.recorded_studies(store) == made


def test_results_reads_the_latest_or_the_given_run(store):
    import studies

    old = _study(store, "twice", PAGE + 1)
    new = _study(store, "twice", 2)
    assert studies.study_run("twice")[1].info.run_id == new
    assert len(studies.results("twice")) == 2
    assert len(studies.results("twice", run_id=old)) == PAGE + 1
    with pytest.raises(studies.UserError, match="has no run 'nope'"):
        studies.study_run("twice", run_id="nope")


def test_registered_models_every_version_once(store, monkeypatch):
    client = store.client
    run = client.create_run(store.experiment_id("reg", create=True))
    made = {"m-a": 2 * PAGE + 1, "m-b": 1, "m-c": PAGE, "m-d": 2}
    for name, versions in made.items():
        client.create_registered_model(name)
        for v in range(versions):
            client.create_model_version(
                name,
                f"runs:/{run.info.run_id}/model{v}",
                run_id=run.info.run_id,
                tags={"study": "reg", "trial_id": f"{name}-{v}", "test_accuracy": "0.5"},
            )
    client.set_registered_model_alias("m-a", "champion", "3")
    client.set_registered_model_alias("m-a", "previous", "2")
    client.set_registered_model_alias("m-a", "canary", "3")
    client.set_registered_model_alias("m-d", "champion", "1")
    searches = Counting(monkeypatch, client, "search_model_versions")

    rows = tracking.registered_models(store)
    assert [(r["name"], r["version"]) for r in rows] == [
        (name, v) for name in sorted(made) for v in range(made[name], 0, -1)
    ]  # every version once, by name then newest version first
    assert searches.calls == [PAGE] * 5  # 13 versions: 4 full pages and the last
    aliases = {(r["name"], r["version"]): r["aliases"] for r in rows if r["aliases"]}
    assert aliases == {("m-a", 3): ["canary", "champion"], ("m-a", 2): ["previous"], ("m-d", 1): ["champion"]}
    assert all(r["test_accuracy"] == 0.5 and r["trial_id"] == f"{r['name']}-{r['version'] - 1}" for r in rows)
