"""End to end: real Ray (local), real Optuna (journal file), real MLflow (sqlite + file artifacts)."""

import json
import math
import textwrap

import mlflow
import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import run_cli, write_study
from tests.test_factory import mlflow_uris

TINY = """\
name: tiny
trainable: digits-cnn
space:
  lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
  batch_size: {type: int, low: 32, high: 128, log: true}
  channels1: {type: int, low: 4, high: 16}
fixed: {channels2: 16, dropout: 0.1}
trials: 6
asha: {max_t: 6, grace_period: 1, reduction_factor: 2}
max_concurrent: 2
seed: 1
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One tiny sweep through the CLI, then `results` and `promote` through the CLI."""
    root = tmp_path_factory.mktemp("sweep")
    env = {"HPSEARCH_HOME": str(root / "home")}
    study = write_study(root / "tiny.yaml", TINY)
    run = run_cli("run", study, cwd=root, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    results = run_cli("results", "tiny", "--format", "json", cwd=root, env=env)
    assert results.returncode == 0, results.stderr
    promote = run_cli("promote", "tiny", "--format", "json", cwd=root, env=env)
    assert promote.returncode == 0, promote.stderr
    promote_again = run_cli("promote", "tiny", "--format", "json", cwd=root, env=env)
    uri = f"sqlite:///{root / 'home' / 'mlflow.db'}"
    return {
        "root": root,
        "run": run,
        "rows": json.loads(results.stdout),
        "promoted": json.loads(promote.stdout),
        "promoted_again": json.loads(promote_again.stdout),
        "client": MlflowClient(uri, uri),
        "uri": uri,
    }


def _runs(client):
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("hpsearch.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("hpsearch.kind") == "trial"]
    return parents, children


def test_mlflow_holds_one_parent_and_a_child_per_trial(swept):
    client = swept["client"]
    parents, children = _runs(client)
    assert len(parents) == 1 and len(children) == 6
    parent = parents[0]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"lr", "batch_size", "channels1", "channels2", "epochs"} <= set(child.data.params)
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(
            range(1, int(child.data.tags["hpsearch.epochs"]) + 1)
        )
        assert child.info.status == "FINISHED"
    for run in [parent, *children]:  # provenance on every run
        tags = run.data.tags
        for key in ("torch", "ray", "optuna", "mlflow", "hpsearch"):
            assert tags[f"hpsearch.version.{key}"]
        assert tags["hpsearch.split_seed"] == "0" and len(tags["hpsearch.data.fingerprint"]) == 16
    assert parent.info.status == "FINISHED"
    assert {"test_accuracy", "test_loss", "best_value"} <= set(parent.data.metrics)


def test_asha_stopped_some_trials_and_states_follow_epochs(swept):
    rows = swept["rows"]
    assert len(rows) == 6
    states = [r["state"] for r in rows]
    assert "pruned" in states and "completed" in states
    for r in rows:
        assert (r["epochs"] == 6) == (r["state"] == "completed"), r
        assert set(r) >= {"trial_id", "state", "metric", "epochs", "params"}


def test_results_are_sorted_best_first(swept):
    values = [r["metric"] for r in swept["rows"]]
    assert values == sorted(values, reverse=True)
    assert [r["rank"] for r in swept["rows"]] == list(range(1, 7))


def test_optuna_was_told_pruned_and_complete_with_intermediate_values(swept):
    journal = swept["root"] / "home" / "optuna" / "tiny.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    (summary,) = optuna.get_all_study_summaries(storage)
    (parent,), _ = _runs(swept["client"])
    assert summary.study_name == parent.data.tags["hpsearch.optuna_study"]
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    by_state = {s: [t for t in trials if t.state == s] for s in optuna.trial.TrialState}
    rows = swept["rows"]
    assert len(by_state[optuna.trial.TrialState.PRUNED]) == sum(r["state"] == "pruned" for r in rows)
    assert len(by_state[optuna.trial.TrialState.COMPLETE]) == sum(r["state"] == "completed" for r in rows)
    for t in by_state[optuna.trial.TrialState.PRUNED]:
        assert 1 <= len(t.intermediate_values) < 6
    for t in by_state[optuna.trial.TrialState.COMPLETE]:
        assert len(t.intermediate_values) == 6 and t.value == max(t.intermediate_values.values())


def test_best_checkpoint_reproduces_its_logged_val_metric(swept, tmp_path):
    from trainables import get_trainable

    client = swept["client"]
    (parent,), _ = _runs(client)
    path = client.download_artifacts(parent.info.run_id, "checkpoint/best_checkpoint.pt", str(tmp_path))
    payload = torch.load(path, weights_only=True)
    assert payload["trial_id"] == parent.data.tags["hpsearch.best_trial"] == swept["rows"][0]["trial_id"]
    again = get_trainable("digits-cnn").evaluate(payload["config"], payload["model"], "val")
    assert again["val_accuracy"] == pytest.approx(parent.data.metrics["best_value"], abs=1e-6)
    assert parent.data.metrics["best_value"] == pytest.approx(swept["rows"][0]["metric"], abs=1e-12)


def test_promote_registers_the_model_with_alias_and_it_predicts_the_test_split(swept):
    promoted = swept["promoted"]
    assert promoted["name"] == "tiny" and promoted["alias"] == "champion" and promoted["version"] == 1
    assert promoted["model_uri"] == "models:/tiny@champion"
    assert {"test_accuracy", "test_loss"} <= set(promoted["test_metrics"])  # and each class's accuracy
    assert swept["promoted_again"]["version"] == 1  # promoting the same model again adds no version
    version = swept["client"].get_model_version_by_alias("tiny", "champion")
    assert version.tags["study"] == "tiny" and version.tags["trial_id"] == swept["rows"][0]["trial_id"]

    from trainables._digits_pairs import DigitsData

    with mlflow_uris(swept["uri"]):  # another test in this process may have pointed it elsewhere
        model = mlflow.pyfunc.load_model("models:/tiny@champion")
    x, y = DigitsData(0).raw["test"]
    accuracy = float((np.asarray(model.predict(x)).argmax(1) == y).mean())
    assert accuracy > 0.8  # chance is 0.1
    assert accuracy == pytest.approx(promoted["test_metrics"]["test_accuracy"], abs=1e-6)


def test_run_prints_progress_results_and_model(swept):
    out = swept["run"].stdout
    assert out.count("/6] ") == 6  # one progress line per finished trial (output is not a terminal)
    assert "\r" not in out
    assert "best: trial" in out and "test_accuracy=" in out and "models:/m-" in out


def test_studies_lists_builtins_and_recorded(swept):
    res = run_cli("studies", "--format", "json", cwd=swept["root"], env={"HPSEARCH_HOME": str(swept["root"] / "home")})
    rows = {r["study"]: r for r in json.loads(res.stdout)}
    assert rows["tiny"]["runs"] == 1 and rows["digits-cnn"]["builtin"]


USER_TRAINABLE = """
import math

def train(config, reporter):
    # A user's own pair: a 1-d quadratic; the best x is 0.3.
    for epoch in range(1, config["epochs"] + 1):
        reporter.report(epoch, {"loss": (config["x"] - 0.3) ** 2 + 1.0 / epoch})
"""


def test_user_trainable_by_import_path_sweeps_from_its_own_directory(tmp_path):
    (tmp_path / "my_pairs.py").write_text(textwrap.dedent(USER_TRAINABLE))
    study = write_study(
        tmp_path / "quad.yaml",
        """\
        name: quad
        trainable: my_pairs:train
        metric: loss
        mode: min
        space: {x: {type: float, low: -1.0, high: 1.0}}
        trials: 3
        asha: {max_t: 3, grace_period: 3}
        """,
    )
    res = run_cli("run", study, cwd=tmp_path, env={"HPSEARCH_HOME": str(tmp_path / "home")})
    assert res.returncode == 0, res.stdout + res.stderr
    rows = json.loads(
        run_cli(
            "results", "quad", "--format", "json", cwd=tmp_path, env={"HPSEARCH_HOME": str(tmp_path / "home")}
        ).stdout
    )
    assert len(rows) == 3 and all(r["state"] == "completed" for r in rows)
    assert rows[0]["metric"] == pytest.approx((rows[0]["params"]["x"] - 0.3) ** 2 + 1 / 3)
    # No export hook: promote refuses with a reason, exit 2.
    res = run_cli("promote", "quad", cwd=tmp_path, env={"HPSEARCH_HOME": str(tmp_path / "home")})
    assert res.returncode == 2 and "logged no servable model" in res.stderr


def test_same_seed_same_sweep_with_one_trial_at_a_time(tmp_path, monkeypatch):
    from search import api

    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    study = write_study(tmp_path / "tiny.yaml", TINY.replace("trials: 6", "trials: 3"))
    outcomes = [api.run(str(study), max_concurrent=1, seed=s) for s in (5, 5, 6)]
    # Ray's trial ids are random; the seed in each trial's params follows its Optuna trial number.
    frames = [api.results("tiny", run_id=o.run_id) for o in outcomes]
    frames = [f.assign(seed=f["params"].apply(lambda p: p["seed"])).sort_values("seed") for f in frames]

    def signature(frame):
        return [
            (json.dumps(p, sort_keys=True), m, e) for p, m, e in zip(frame["params"], frame["metric"], frame["epochs"])
        ]

    assert signature(frames[0]) == signature(frames[1])
    assert signature(frames[0]) != signature(frames[2])
    assert all(math.isfinite(m) for m in frames[0]["metric"])


def test_results_filters_sorts_and_formats(swept, cli, tmp_path):
    import pandas as pd

    uri = ["--tracking-uri", swept["uri"]]
    rows = swept["rows"]
    code, out, err = cli("results", "tiny", "--state", "pruned", "--format", "json", *uri)
    assert code == 0, err
    assert [r["trial_id"] for r in json.loads(out)] == [r["trial_id"] for r in rows if r["state"] == "pruned"]

    code, out, _ = cli("results", "tiny", "--where", "lr < 0.003 and epochs >= 1", "--format", "json", *uri)
    assert [r["trial_id"] for r in json.loads(out)] == [r["trial_id"] for r in rows if r["params"]["lr"] < 0.003]

    code, out, _ = cli("results", "tiny", "--sort", "lr:desc", "--format", "json", *uri)
    lrs = [r["params"]["lr"] for r in json.loads(out)]
    assert lrs == sorted(lrs, reverse=True) and len(lrs) == 6

    code, out, _ = cli("results", "tiny", "--format", "csv", "--top", "3", *uri)
    lines = out.strip().splitlines()
    assert len(lines) == 4 and "param.lr" in lines[0].split(",")

    target = tmp_path / "rows.parquet"
    code, _, err = cli("results", "tiny", "--format", "parquet", "--output", target, *uri)
    assert code == 0, err
    frame = pd.read_parquet(target)
    assert len(frame) == 6 and list(frame["trial_id"]) == [r["trial_id"] for r in rows]

    for bad, message in [
        (["--where", "lr <"], "--where: cannot apply 'lr <'"),
        (["--where", "nosuch > 1"], "--where: cannot apply 'nosuch > 1'"),
        (["--sort", "nosuch"], "--sort: no column or param 'nosuch'"),
        (["--state", "done"], "--state: 'done' is not one of"),
        (["--format", "parquet"], "--format parquet: give --output FILE"),
    ]:
        code, _, err = cli("results", "tiny", *bad, *uri)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_show_summarises_the_finished_sweep(swept, cli):
    code, out, err = cli("show", "tiny", "--tracking-uri", swept["uri"])
    assert code == 0, err
    pruned = sum(r["state"] == "pruned" for r in swept["rows"])
    assert f"0 running, {6 - pruned} completed, {pruned} pruned, 0 stopped, 0 failed" in out
    assert f"trial {swept['rows'][0]['trial_id']}" in out and "FINISHED" in out


def test_a_second_promotion_keeps_the_previous_champion_and_rollback_swaps_them(swept):
    """Last in this module: it adds a second run of `tiny` (so `results` would read that one from now on)."""
    root, env = swept["root"], {"HPSEARCH_HOME": str(swept["root"] / "home")}
    first = swept["promoted"]
    version = swept["client"].get_model_version(first["name"], str(first["version"]))
    assert version.tags["git_commit"]  # the trainable's code lives in this repository
    assert {"params", "val_value", "split_seed", "version.hpsearch", "checkpoint_sha256"} <= set(version.tags)

    rerun = run_cli("run", root / "tiny.yaml", "--trials", "2", "--seed", "7", cwd=root, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    second = run_cli("promote", "tiny", "--format", "json", cwd=root, env=env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["version"] == 2 and json.loads(second.stdout)["previous_version"] == 1

    def aliases():
        listed = run_cli("models", "--format", "json", cwd=root, env=env)
        assert listed.returncode == 0, listed.stderr
        return {row["version"]: row["aliases"] for row in json.loads(listed.stdout) if row["name"] == "tiny"}

    assert aliases() == {2: ["champion"], 1: ["previous"]}
    back = run_cli("rollback", "tiny", cwd=root, env=env)
    assert back.returncode == 0 and "version 1 again" in back.stdout, back.stderr
    assert aliases() == {1: ["champion"], 2: ["previous"]}
    models = json.loads(run_cli("models", "--format", "json", cwd=root, env=env).stdout)
    assert all("test_accuracy" in row and row["study"] == "tiny" for row in models)

    missing = run_cli("rollback", "nosuch", cwd=root, env=env)
    assert missing.returncode == 2 and "no registered model 'nosuch'" in missing.stderr
