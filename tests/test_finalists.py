"""The report's "Finalists" section over records written as promotion writes them (real MLflow): each
configuration's single-split value next to its retrainings' mean ± std over seeds or folds, a killed
promotion's runs left out, the latest registered ensemble's members and weights, and one line when there is
no evidence."""

import json
import re

import pytest

import studies
import tracking
from search.review._finalists import finalists_html
from tracking.tags import RESEED_OF

STUDY = "fin"
TRIALS = {"t0": 0.9895833333333334, "t1": 0.9791666666666666, "t2": 0.5}


@pytest.fixture
def recorded(home):
    """A parent run with three trials; t0 retrained with 2 seeds, t1 on 4 of 5 folds (a fifth fold KILLED, and
    a seed run still RUNNING from a killed promotion)."""
    store = tracking.Store()
    recorder = tracking.StudyRecorder(store, STUDY, {})
    recorder.start({"metric": "val_accuracy", "mode": "max", "trials": 3}, "name: fin\n", "run")
    for trial, value in TRIALS.items():
        recorder.trial_started(trial, {"lr": 0.01})
        recorder.trial_result(trial, 1, {"val_accuracy": value})
        recorder.trial_ended(trial, "completed", {tracking.tags.BEST_VALUE: value})

    def retraining(name, of, kind, value, fold=None, status=None):
        tags = {RESEED_OF: of, **({"hpsearch.fold": fold} if fold else {})}
        recorder.trial_started(name, {"lr": 0.01}, kind=kind, tags=tags)
        recorder.trial_result(name, 1, {"val_accuracy": value})
        if status != "RUNNING":
            recorder.trial_ended(name, "completed", {tracking.tags.BEST_VALUE: value}, status=status)

    retraining("t0-seed1", "t0", "reseed", 0.96875)
    retraining("t0-seed2", "t0", "reseed", 0.9791666666666666)
    retraining("t0-seed3", "t0", "reseed", 0.2, status="RUNNING")  # the promotion was killed meanwhile
    for i, value in enumerate([0.97, 0.98, 0.99, 0.96]):
        retraining(f"t1-fold{i + 1}", "t1", "fold", value, fold=f"{i + 1}/5")
    retraining("t1-fold5", "t1", "fold", 0.1, fold="5/5", status="KILLED")
    recorder.finish()
    parent = tracking.parent_runs(store, STUDY)[0]
    return store, parent


def _section(store, parent) -> str:
    frame = studies.results(STUDY)
    return finalists_html(store, parent, STUDY, frame, "val_accuracy", "max")


def _cells(page: str) -> list[list[str]]:
    return [re.findall(r"<t[dh]>(.*?)</t[dh]>", row) for row in re.findall(r"<tr>(.*?)</tr>", page)]


def test_each_finalist_shows_its_single_split_value_and_its_spread(recorded):
    store, parent = recorded
    rows = _cells(_section(store, parent))
    assert rows[0] == [
        "configuration (trial)",
        "single split val_accuracy",
        "retrained on",
        "mean ± std val_accuracy",
        "n",
    ]
    # best mean first; the killed and the still-running retrainings are left out (t1 0.975, t0 0.974)
    assert rows[1:] == [
        ["t1", "0.9792", "4 of 5 folds", "0.975 ± 0.01291", "4"],
        ["t0", "0.9896", "2 seeds", "0.974 ± 0.007366", "2"],
    ]
    assert "t2" not in _section(store, parent)  # never retrained: no evidence to show


def test_the_latest_registered_ensemble_shows_its_members_weights_and_held_out_values(recorded, tmp_path):
    store, parent = recorded
    member = {"trial_id": "t1", "seed": None, "checkpoint_sha256": "ab" * 32}
    members = [
        {**member, "name": f"t1-fold{i}", "run_id": f"r{i}", "fold": f"{i}/5", "weight": w}
        for i, w in ((1, 0.3333333333333333), (2, 0.6666666666666666))
    ]
    client = store.client
    client.create_registered_model(STUDY)
    single = {"study": STUDY, "trial_id": "t0", "run_id": parent.info.run_id}
    client.create_model_version(STUDY, str(tmp_path / "a"), tags=single)
    ensemble = {
        **single,
        "trial_id": "t1",
        "model_kind": "ensemble",
        "members": json.dumps(members),
        "ensemble_size": "2",
        "held_out_single": "0.9652777777777778",
        "held_out_ensemble": "0.9791666666666666",
    }
    client.create_model_version(STUDY, str(tmp_path / "b"), tags=ensemble)
    page = _section(store, parent)
    assert "t1 (registered)" in page and "t0 (registered)" not in page
    assert (
        "Latest registered: fin version 2, an ensemble of 2 members; held out: single model 0.9653, ensemble 0.9792."
        in page
    )
    rows = _cells(page)
    at = rows.index(["member", "trial", "seed", "fold", "weight", "checkpoint"])
    assert rows[at + 1 :] == [
        ["t1-fold1", "t1", "-", "1/5", "0.3333", "abababababab"],
        ["t1-fold2", "t1", "-", "2/5", "0.6667", "abababababab"],
    ]


def test_without_retrainings_or_an_ensemble_the_section_says_so_in_one_line(home):
    store = tracking.Store()
    recorder = tracking.StudyRecorder(store, STUDY, {})
    recorder.start({"metric": "val_accuracy", "mode": "max", "trials": 1}, "name: fin\n", "run")
    recorder.trial_started("t0", {"lr": 0.01})
    recorder.trial_ended("t0", "completed", {tracking.tags.BEST_VALUE: 0.9})
    recorder.finish()
    page = _section(store, tracking.parent_runs(store, STUDY)[0])
    assert page.startswith("<p>Nothing was promoted with evidence yet") and page.count("<p>") == 1
    assert "<table>" not in page
