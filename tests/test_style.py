"""The code's format and lint, as configured in pyproject.toml ([tool.ruff]): one formatter, one linter."""

import subprocess
import sys

from tests.conftest import REPO


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_code_is_formatted_by_ruff():
    done = _ruff("format", "--check", ".")
    assert done.returncode == 0, f"run `ruff format .`:\n{done.stdout}{done.stderr}"


def test_the_code_passes_ruffs_lint():
    done = _ruff("check", "--output-format", "concise", ".")
    assert done.returncode == 0, f"run `ruff check .`:\n{done.stdout}{done.stderr}"
