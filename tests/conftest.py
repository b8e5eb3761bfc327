import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh HPSEARCH_HOME that does not exist yet (so tests can check nothing was written)."""
    path = tmp_path / "home"
    monkeypatch.setenv("HPSEARCH_HOME", str(path))
    return path


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from search.cli import main

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run `hpsearch` as a user would, in a subprocess."""
    exe = Path(sys.executable).parent / "hpsearch"
    return subprocess.run(
        [str(exe), *map(str, args)], cwd=cwd, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def write_study(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path
