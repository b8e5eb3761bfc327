"""The README's two commands are what a new user runs, and CI runs the test one verbatim."""

import re

from tests.conftest import REPO


def _command(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```sh\n(.+?)\n```", text, re.S)
    assert match, f"README has no {marker} command"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command():
    assert _command("tests") in (REPO / ".ci" / "run").read_text()


def test_quickstart_runs_the_default_study_and_promotes_it():
    command = _command("quickstart")
    assert "hpsearch run digits-cnn" in command and "hpsearch promote digits-cnn" in command
    assert "-c constraints.txt" in command


def test_the_own_model_example_runs_verbatim_in_a_fresh_folder(tmp_path):
    """ "Bringing your own model": the README's block, as a user pastes it into a shell in an empty folder with
    the venv's `bin` on PATH: it sweeps, checks, reports and promotes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    command = _command("own-model")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}  # the defaults: ./hpsearch-runs
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "test_accuracy" in done.stdout and "models:/" in done.stdout
    assert (tmp_path / "signals" / "hpsearch-runs" / "mlflow.db").exists()  # everything in the user's folder
