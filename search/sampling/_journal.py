"""Where a study's Optuna journal is: `optuna/STUDY.journal` in the study's state folder (on the shared
storage when there is one, so every machine reads and appends to the same journal). A run records the
journal it uses as a tag, so the commands that read it later (`--resume`, `--fresh`, `report`) find it from
any machine. Optuna's JournalFileBackend locks the file with a lock file beside it, which works on NFS."""

from __future__ import annotations

from pathlib import Path

from tracking import tags as T


def journal_path(root: Path, study: str) -> Path:
    return root / "optuna" / f"{study}.journal"


def run_journal(run, home: Path) -> Path:
    """The journal a parent run (an mlflow Run) used; runs from before the tag used the data directory's."""
    recorded = run.data.tags.get(T.OPTUNA_JOURNAL)
    return Path(recorded) if recorded else journal_path(home, run.data.tags.get(T.STUDY, ""))
