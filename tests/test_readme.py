"""The README's two commands are what a new user runs, and CI runs the test one verbatim."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, run_cli


def _command(marker: str, language: str = "sh") -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```{language}\n(.+?)\n```", text, re.S)
    assert match, f"README has no {marker} command"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command():
    assert _command("tests") in (REPO / ".ci" / "run").read_text()


def test_quickstart_runs_the_default_study_and_promotes_it():
    command = _command("quickstart")
    assert "hpsearch run digits-cnn" in command and "hpsearch promote digits-cnn" in command
    assert "-c constraints.txt" in command


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """ "Bringing your own model": the README's block, as a user pastes it into a shell in an empty folder with
    the venv's `bin` on PATH: it sweeps, checks, reports and promotes. The one run of that flow, for the tests
    of the block and of a user project's whole way through the CLI."""
    root = tmp_path_factory.mktemp("own-model")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}  # the defaults: ./hpsearch-runs
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _command("own-model")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return root / "signals", env, done


def test_the_own_model_example_runs_verbatim_in_a_fresh_folder(own_model):
    folder, _, done = own_model
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "test_accuracy" in done.stdout and "models:/" in done.stdout
    assert (folder / "hpsearch-runs" / "mlflow.db").exists()  # everything in the user's folder


def test_a_new_users_first_run_and_promote_print_only_hpsearchs_own_lines(own_model):
    """One voice on the console: a first `run` on a new store and a first `promote` on a new registry print
    no other library's INFO lines, and the promote line leaves the per-class metrics to --format json."""
    _, _, done = own_model
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    console = done.stdout + done.stderr
    for foreign in ("Creating initial MLflow database tables", "Updating database tables", "Registered model"):
        assert foreign not in console, foreign
    assert not re.search(r"^\S+ \S+ INFO ", console, re.M), console[-3000:]  # `2026/12/07 12:52:32 INFO mlflow...`
    (promoted,) = [line for line in done.stdout.splitlines() if line.startswith("promoted signals")]
    assert "_class_" not in promoted and "test_accuracy=" in promoted, promoted


def test_a_user_project_sweeps_checks_reports_and_promotes_a_model_that_serves_raw_inputs(own_model):
    """The README's project, past its block: its check named each step, its report drew the confusion matrix,
    and a promotion that retrains the best two serves raw signals as the test split scored them."""
    import mlflow

    from tests.test_factory import mlflow_uris

    folder, env, done = own_model
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Token authentication" not in done.stdout + done.stderr  # Ray's notice stays out of the console
    assert all(name in done.stdout for name in ("data", "overfit one batch", "lr range"))  # `hpsearch check`
    assert "confusion matrix" in (folder / "hpsearch-runs" / "reports" / "signals.html").read_text()
    reseeded = run_cli(
        "promote", "signals", "--candidates", "2", "--reseeds", "1", "--format", "json", cwd=folder, env=env
    )
    assert reseeded.returncode == 0, reseeded.stdout + reseeded.stderr
    info = json.loads(reseeded.stdout)
    assert len(info["candidates"]) == 2 and all(len(c["values"]) == 2 for c in info["candidates"])

    with mlflow_uris(f"sqlite:///{folder / 'hpsearch-runs' / 'mlflow.db'}"):
        served = mlflow.pyfunc.load_model(f"models:/signals@{info['alias']}")
    user = {}
    exec((folder / "mymodel.py").read_text(), user)  # the project's own test split: raw signals of known classes
    _, _, (x, y) = user["data"]({"split_seed": 0})
    predicted = np.asarray(served.predict(x.numpy())).argmax(1)
    assert predicted.shape == y.shape
    assert float((predicted == y.numpy()).mean()) == pytest.approx(info["test_metrics"]["test_accuracy"], abs=1e-6)
    assert info["test_metrics"]["test_accuracy"] > 0.6  # three classes: chance is a third


def _flags(text: str) -> set[str]:
    return set(re.findall(r"--[a-z][a-z-]*", text))


def test_the_command_table_and_the_location_flags_agree_with_every_help():
    """README's "Commands": each command's row names its own flags, the location table the flags that say
    where things are; together they are exactly what its --help offers."""
    from search.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if getattr(a, "choices", None)]
    helps = {
        name: {o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
        for name, sub in commands.choices.items()
    }
    text = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| `hpsearch ([a-z]+)([^`]*)` \|", text, re.M))
    assert set(rows) == set(helps), set(rows) ^ set(helps)
    own = {name: _flags(usage) for name, usage in rows.items()}
    own["submit"] |= own["run"] if "the flags of run" in rows["submit"] else set()
    located = {name: set() for name in helps}
    table = re.findall(r"^\| `(--[a-z-]+) [^`]*` \([^)]*\) \| (.+) \|$", text, re.M)
    assert {flag for flag, _ in table} == {"--address", "--tracking-uri", "--storage"}, table
    for flag, where in table:
        named = set(re.findall(r"`([a-z]+)`", where))
        for name in set(helps) - named if where.startswith("every command but") else named:
            located[name].add(flag)
    for name, offered in helps.items():
        assert own[name] | located[name] == offered, (name, sorted(own[name] | located[name]), sorted(offered))
