"""`promote --candidates K --folds F --ensemble N` on a real digits sweep: the fold runs in MLflow with their
metrics, the test split unread by the folds, the ensemble logged as one pyfunc that averages its members'
probabilities in a fresh process, a second promotion reusing every recorded fold, and the refusals."""

import collections
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from search import api
from tests.conftest import write_study


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    """One finished digits sweep (tests.counting logs each split read), promoted with 2 candidates x 3 folds and
    an ensemble of at most 4 picks."""
    tmp = tmp_path_factory.mktemp("folded")
    mp = pytest.MonkeyPatch()
    mp.setenv("HPSEARCH_HOME", str(tmp / "home"))
    study = write_study(
        tmp / "folded.yaml",
        f"""\
        name: folded
        trainable: tests.counting:trainable
        space:
          lr: {{type: float, low: 3.0e-3, high: 3.0e-2, log: true}}
          hidden: {{type: categorical, choices: [16, 64]}}
        fixed: {{log_dir: "{tmp}", layers: 1}}
        trials: 4
        asha: {{max_t: 3, grace_period: 3}}
        max_concurrent: 1
        """,
    )
    api.run(str(study), out=io.StringIO())
    before = _reads(tmp)
    out = io.StringIO()
    info = api.promote("folded", candidates=2, folds=3, ensemble=4, out=out)
    yield tmp, info, before, out.getvalue()
    mp.undo()


def _reads(tmp):
    lines = (tmp / "reads.log").read_text().split()
    return collections.Counter(zip(lines[::2], lines[1::2]))


def test_each_candidate_is_trained_on_every_fold_and_recorded(folded):
    import tracking

    tmp, info, _, said = folded
    assert [len(c["values"]) for c in info["candidates"]] == [3, 3] and info["folds"] == 3
    assert sum(c["chosen"] for c in info["candidates"]) == 1
    means = [c["mean"] for c in info["candidates"]]
    assert means == sorted(means, reverse=True)
    store = tracking.Store()
    parent = tracking.parent_runs(store, "folded")[0]
    runs = store.client.search_runs([parent.info.experiment_id], "tags.`hpsearch.kind` = 'fold'")
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.tags["hpsearch.fold"] for r in runs) == ["1/3", "1/3", "2/3", "2/3", "3/3", "3/3"]
    assert len({r.data.tags["hpsearch.folds_sha256"] for r in runs}) == 1  # the same folds for every candidate
    for run in runs:
        history = store.client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1, 2, 3]  # per-epoch metrics of each fold
        assert run.data.metrics["best_value"] == max(m.value for m in history)
        params = json.loads(run.data.tags["hpsearch.params"])
        assert params["cv_fold"][1] == 3 and params["seed"] != 0
    by_trial = collections.defaultdict(list)
    for run in runs:
        by_trial[run.data.tags["hpsearch.reseed_of"]].append(run.data.metrics["best_value"])
    for c in info["candidates"]:
        assert sorted(c["values"]) == sorted(by_trial[c["trial_id"]])
    assert len(api.results("folded")) == 4  # fold runs are not search trials
    assert said.count(" fold ") == 6, said


def test_folds_never_read_the_test_split(folded):
    tmp, info, before, _ = folded
    after = _reads(tmp)
    driver = str(os.getpid())
    workers = {pid for pid, _ in after} - {driver}
    assert workers and not any(after[(pid, "test")] for pid in workers)
    # The driver read it once for the sweep's best, and at most once more: the promoted model's one test.
    assert before[(driver, "test")] == 1 and after[(driver, "test")] - before[(driver, "test")] <= 1
    assert info["test_metrics"]["test_accuracy"] > 0.5


def test_the_ensemble_is_one_pyfunc_that_averages_its_members(folded):
    import torch

    import tracking
    from trainables import get_trainable

    tmp, info, _, said = folded
    held = info["held_out"]
    assert held["ensemble"] >= held["single"] and "held-out val_accuracy" in said
    assert info["kind"] == "ensemble", held  # the sweep is sequential and seeded: the same outcome each run
    members = info["members"]
    assert members and abs(sum(m["weight"] for m in members) - 1) < 1e-6
    assert all(m["fold"] and m["run_id"] for m in members)
    store = tracking.Store()
    version = store.client.get_model_version("folded", str(info["version"]))
    assert version.tags["model_kind"] == "ensemble" and json.loads(version.tags["members"]) == members
    pixels = np.random.default_rng(0).integers(0, 17, size=(5, 64)).astype(np.float32)
    code = (
        "import sys, json, numpy as np, mlflow\n"
        "x = np.array(json.loads(sys.stdin.read()), dtype=np.float32)\n"
        "print(json.dumps(mlflow.pyfunc.load_model('models:/folded@champion').predict(x).tolist()))\n"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(pixels.tolist()), capture_output=True, text=True, check=True
    )
    served = np.exp(np.array(json.loads(fresh.stdout.strip().splitlines()[-1])))
    trainable = get_trainable("tests.counting:trainable")
    expected = np.zeros_like(served)
    for m in members:
        run = store.client.get_run(m["run_id"])
        config = json.loads(run.data.tags["hpsearch.params"])
        module, _ = trainable.export(config, tracking.load_best_checkpoint(store, m["run_id"])["model"])
        with torch.no_grad():
            expected += m["weight"] * torch.softmax(module(torch.from_numpy(pixels)), dim=1).numpy()
    assert np.allclose(served, expected, atol=1e-5)
    assert info["cost"]["members"] == len(members) and info["cost"]["parameters"] > info["cost"]["single_parameters"]


def test_a_second_promotion_reuses_every_recorded_fold(folded, cli):
    import tracking

    tmp, first, _, _ = folded
    code, out, err = cli(
        "promote", "folded", "--candidates", "2", "--folds", "3", "--ensemble", "4", "--format", "json"
    )
    assert code == 0, err
    again = json.loads(out)
    assert again["compute_s"] == 0 and err.count("(recorded)") == 6
    assert again["version"] == first["version"]  # the same ensemble: the alias stays, no new version
    store = tracking.Store()
    parent = tracking.parent_runs(store, "folded")[0]
    assert len(store.client.search_runs([parent.info.experiment_id], "tags.`hpsearch.kind` = 'fold'")) == 6
    assert len(store.client.search_runs([parent.info.experiment_id], "tags.`hpsearch.kind` = 'ensemble'")) == 1


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--folds", "3"], "--folds needs --candidates K"),
        (["--candidates", "2", "--folds", "3", "--reseeds", "2"], "--folds and --reseeds: choose one"),
        (["--candidates", "2", "--folds", "1"], "--folds: 1 is not allowed"),
        (["--ensemble", "1"], "--ensemble: 1 is not allowed"),
        (["--candidates", "0"], "--candidates: 0 is not allowed"),
    ],
)
def test_bad_flag_combinations_are_one_line(folded, cli, flags, says):
    import tracking

    store = tracking.Store()
    parent = tracking.parent_runs(store, "folded")[0]
    count = len(tracking.child_runs(store, parent.info.experiment_id, parent.info.run_id))
    code, out, err = cli("promote", "folded", *flags)
    assert code == 2 and err.startswith("hpsearch: error: ") and says in err and len(err.splitlines()) == 1, err
    assert len(tracking.child_runs(store, parent.info.experiment_id, parent.info.run_id)) == count


def test_the_report_shows_the_finalists_spread_and_the_ensemble(folded):
    import html

    tmp, info, _, _ = folded
    path, _ = api.report("folded", output=str(tmp / "folded.html"))
    page = html.unescape(open(path).read())
    assert page.count("<td>3 folds</td>") == 2
    for c in info["candidates"]:
        assert f"{c['trial_id']}" in page
    assert f"an ensemble of {len(info['members'])} members" in page
    assert all(m["name"] in page for m in info["members"])


def test_an_ensemble_of_the_sweeps_checkpoints_and_reseeds_is_chosen_on_the_validation_split(folded):
    out = io.StringIO()
    info = api.promote("folded", candidates=2, reseeds=1, ensemble=4, name="folded-val", out=out)
    held = info["held_out"]
    # The single model's held-out value is its best checkpoint's validation value, scored as training scored it.
    chosen = next(c for c in info["candidates"] if c["chosen"])
    assert held["single"] == pytest.approx(max(chosen["values"]), abs=1e-9)
    assert held["ensemble"] >= held["single"]  # greedy selection starts from the best single model
    assert info["kind"] == ("ensemble" if held["ensemble"] > held["single"] else "single")
    assert "held-out val_accuracy" in out.getvalue()
