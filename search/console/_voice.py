"""hpsearch's one voice on the console: an error is `hpsearch: error: WHAT (WHERE it came from) — what to do`,
a warning `hpsearch: warning: ...`, both one line on stderr; everything else a command prints is its answer."""

from __future__ import annotations

import sys


def error(message: str) -> None:
    print(f"hpsearch: error: {message}", file=sys.stderr)


def warning(message: str) -> None:
    print(f"hpsearch: warning: {message}", file=sys.stderr)
