"""The CLI's success paths that no other test takes: `run --hours/--max-concurrent/--warm-start`, `check
--data-root`, `promote --alias/--name/--run`, `results --output`, `rollback --alias`, the tables of `studies`,
`models` and `trainables`, and `run`'s exit code 1 when every trial fails.

Three tiny sweeps serve them all (each costs its start-up): a digits source, a digits sweep that warm-starts
from it under a budget of hours and one trial at a time, and one whose every trial fails. Each test checks what
MLflow, Optuna or the written file hold afterwards, not only the exit code."""

import contextlib
import io
import json

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

import tracking

T = tracking.tags

DIGITS = {
    "trainable": "digits-mlp",
    "space": {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True}},
    "asha": {"max_t": 2, "grace_period": 2},
    "sampler": "random",
}
BUDGET_H = 0.02  # 72 s: far fewer than the spec's trials of 2 epochs, one at a time, fit in it
TRIALS = 100_000  # (100 did fit once, in a test process whose Ray was already up)


def hpsearch(*args) -> tuple[int, str, str]:
    """`hpsearch ARGS` in this process, as the `cli` fixture runs it, for the module's fixture: (code, out, err)."""
    from search.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def write(folder, name: str, **fields) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **fields}, sort_keys=False))
    return str(path)


def optuna_trials(home, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(home / "optuna" / f"{name}.journal"))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    return sorted(optuna.load_study(study_name=summary.study_name, storage=storage).trials, key=lambda t: t.number)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The three sweeps, in one HPSEARCH_HOME; the source promoted by `--run` under another name and alias,
    and the warm-started sweep promoted to the same alias after it."""
    root = tmp_path_factory.mktemp("paths")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPSEARCH_HOME", str(home))
        src = hpsearch("run", write(root, "cp-src", trials=2, max_concurrent=2, **DIGITS))
        assert src[0] == 0, src
        store = tracking.Store(home=home)
        (src_run,) = tracking.parent_runs(store, "cp-src")
        dst_path = write(root, "cp-dst", trials=TRIALS, max_concurrent=2, **DIGITS)
        dst = hpsearch("run", dst_path, "--hours", BUDGET_H, "--max-concurrent", 1, "--warm-start", "cp-src")
        assert dst[0] == 0, dst
        first = hpsearch("promote", "cp-src", "--run", src_run.info.run_id, "--name", "cp-model", "--alias", "staging")
        second = hpsearch("promote", "cp-dst", "--name", "cp-model", "--alias", "staging", "--format", "json")
        assert first[0] == second[0] == 0, (first, second)
        failing = write(
            root,
            "cp-fail",
            trainable="tests.faulty:train",
            metric="loss",
            mode="min",
            space={"fault": {"type": "categorical", "choices": ["raise"]}},  # each trial raises at its epoch 2
            fixed={"marker_dir": str(root)},
            trials=2,
            asha={"max_t": 2, "grace_period": 2},
        )
        doomed = hpsearch("run", failing)
        yield {
            "root": root,
            "home": home,
            "store": store,
            "src": src,
            "src_run": src_run,
            "dst": dst,
            "promoted": (first, json.loads(second[1])),
            "doomed": doomed,
        }


@pytest.fixture
def at_home(swept, monkeypatch):
    monkeypatch.setenv("HPSEARCH_HOME", str(swept["home"]))
    return swept


def test_run_with_hours_max_concurrent_and_warm_start_from_the_cli(at_home, cli):
    code, out, _ = at_home["dst"]
    store, home = at_home["store"], at_home["home"]
    (parent,) = tracking.parent_runs(store, "cp-dst")
    # The flags override the spec (2 trials at once) and are what the run records.
    assert parent.data.params["hours"] == str(BUDGET_H) and parent.data.params["max_concurrent"] == "1"
    trials = optuna_trials(home, "cp-dst")
    rows = tracking.trial_rows(store, parent)
    # The budget ended the sweep, not the trial count (how many trials fit in it depends on the machine's
    # load), and a trial it cut short says so.
    assert "sweep ended early: budget" in out and len(trials) < TRIALS and all(t.state.is_finished() for t in trials)
    assert all(r["reason"] == "budget" for r in rows if r["state"] == "stopped"), rows
    # One trial at a time: Optuna asked for each trial only after it was told the previous one's end.
    for before, after in zip(trials, trials[1:]):
        assert after.datetime_start >= before.datetime_complete, (before.number, after.number)
    # The warm start: the source's two configurations, best first, are the first two trials.
    ranked = json.loads(cli("results", "cp-src", "--format", "json")[1])
    assert [t.params["lr"] for t in trials[:2]] == [r["params"]["lr"] for r in ranked]
    assert "warm start from cp-src: 2 configuration(s) enqueued" in out
    assert code == 0 and "best: trial" in out


def test_promote_by_run_under_a_name_and_alias_then_rollback_that_alias(at_home, cli):
    store, src_run = at_home["store"], at_home["src_run"]
    (dst_run,) = tracking.parent_runs(store, "cp-dst")
    _, second = at_home["promoted"]
    client = MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
    versions = sorted(client.search_model_versions("name = 'cp-model'"), key=lambda v: int(v.version))
    assert [(v.tags["study"], v.tags["run_id"]) for v in versions] == [
        ("cp-src", src_run.info.run_id),
        ("cp-dst", dst_run.info.run_id),
    ]
    assert versions[0].tags["trial_id"] == src_run.data.tags[T.BEST_TRIAL]
    assert second["name"] == "cp-model" and second["alias"] == "staging" and second["version"] == 2
    assert int(client.get_model_version_by_alias("cp-model", "staging").version) == 2
    previous = tracking.previous_alias("staging")
    assert client.get_registered_model("cp-model").aliases == {"staging": 2, previous: 1}  # no champion was set

    code, out, err = cli("rollback", "cp-model", "--alias", "staging")
    assert code == 0, err
    assert int(client.get_model_version_by_alias("cp-model", "staging").version) == 1
    assert int(client.get_model_version_by_alias("cp-model", previous).version) == 2
    assert f"cp-model@staging is version 1 again (version 2 is now @{previous})" in out


def test_results_output_writes_the_rows_results_holds(at_home, cli, tmp_path):
    code, out, err = cli("results", "cp-dst", "--format", "csv", "--output", tmp_path / "deep" / "rows.csv")
    written = pd.read_csv(tmp_path / "deep" / "rows.csv")
    code, shown, _ = cli("results", "cp-dst", "--format", "json")
    rows = json.loads(shown)
    assert out == f"wrote {len(rows)} rows to {tmp_path / 'deep' / 'rows.csv'}\n", err  # the rows: in the file
    assert list(written["trial_id"]) == [r["trial_id"] for r in rows] and rows
    assert np.allclose(written["metric"], [r["metric"] for r in rows], equal_nan=True)
    assert {r["trial_id"] for r in rows} == {
        r["trial_id"]
        for r in tracking.trial_rows(at_home["store"], tracking.parent_runs(at_home["store"], "cp-dst")[0])
    }


def test_the_tables_of_studies_models_and_trainables_list_what_the_json_lists(at_home, cli):
    code, table, err = cli("studies")
    assert code == 0, err
    recorded = json.loads(cli("studies", "--format", "json")[1])
    assert {(r["study"], r["runs"]) for r in recorded} >= {("cp-src", 1), ("cp-dst", 1), ("cp-fail", 1)}
    lines = table.splitlines()
    assert lines[0].split() == list(recorded[0])  # a header, then one line per study
    assert [line.split() for line in lines[1:]] == [[str(v) for v in r.values()] for r in recorded]

    code, table, err = cli("models")
    assert code == 0, err
    lines = table.splitlines()
    assert lines[0].split()[:6] == ["name", "version", "aliases", "kind", "members", "study"] and len(lines) == 3
    registered = json.loads(cli("models", "--format", "json")[1])  # the aliases: before or after the rollback test
    assert {r["study"] for r in registered} == {"cp-src", "cp-dst"}
    assert [line.split()[:6] for line in lines[1:]] == [
        [r["name"], str(r["version"]), ",".join(r["aliases"]) or "-", r["kind"], "-", r["study"]] for r in registered
    ]

    code, table, err = cli("trainables")
    assert code == 0, err
    listed = json.loads(cli("trainables", "--format", "json")[1])
    heads = [line.split(":")[0] for line in table.splitlines() if not line.startswith(" ")]
    assert heads == [row["name"] for row in listed] and "digits-mlp" in heads
    mlp = next(row for row in listed if row["name"] == "digits-mlp")
    assert f"  {'lr':<15} {mlp['hyperparameters']['lr']} [default {mlp['defaults']['lr']!r}]" in table


def test_run_exits_1_when_every_trial_fails_and_the_stores_say_each_failed(at_home):
    code, out, err = at_home["doomed"]
    assert code == 1, (out, err)
    assert "no trial produced a best model" in err
    store = at_home["store"]
    (parent,) = tracking.parent_runs(store, "cp-fail")
    rows = tracking.trial_rows(store, parent)
    assert len(rows) == 2 and {r["state"] for r in rows} == {"failed"}
    assert all("injected failure in trial code" in r["reason"] for r in rows)
    assert T.MODEL_URI not in parent.data.tags
    assert [t.state for t in optuna_trials(at_home["home"], "cp-fail")] == [optuna.trial.TrialState.FAIL] * 2


def test_check_reads_the_data_set_from_data_root(tmp_path, cli, monkeypatch):
    """`check --data-root` on a user's ImageFolder: the data check reads the folder given, not the spec's."""
    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(0)
    for label, colour in enumerate([(220, 40, 40), (40, 40, 220)]):
        (tmp_path / "pets" / f"class_{label}").mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(tmp_path / "pets" / f"class_{label}" / f"{i}.png")
    spec = write(tmp_path, "pets", **{**DIGITS, "trainable": "imagefolder-cnn", "data_root": str(tmp_path / "no")})
    code, out, err = cli("check", spec, "--data-root", tmp_path / "pets")
    assert code == 0, out + err
    # The 2 x 20 images given, split 28/4/8: the folder the flag named was read.
    assert "[  ok] data\n       train: x (28, 3, 12, 12) float32" in out and "head: 2 outputs for 2 classes" in out
    assert out.rstrip().endswith("preflight passed")
    code, out, err = cli("check", spec)  # the spec's own data_root holds nothing
    assert code == 2 and str(tmp_path / "no") in err, out + err
