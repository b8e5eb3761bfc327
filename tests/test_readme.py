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
