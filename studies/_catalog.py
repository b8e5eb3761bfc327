"""The built-in studies: YAML files shipped inside the package, and how a STUDY argument is resolved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._spec import StudySpec, check_name, load_spec_file, with_overrides
from .errors import UserError

CATALOG_DIR = Path(__file__).parent / "catalog"


def builtin_studies() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CATALOG_DIR.glob("*.yaml"))}


def _is_file_ref(ref: str) -> bool:
    path = Path(ref)
    return path.suffix in (".yaml", ".yml") or path.exists() or "/" in ref


def study_name(ref: str) -> str:
    """STUDY as the commands that read a study's records take it: a study's name, or the path of its YAML
    file (whose `name` it is), so the file a team passed to `run` or `submit` works in `show`, `logs`..."""
    # Only what is surely a file is read as one: anything else is a name, checked as one ('../etc' is refused as
    # a name, not looked for as a file).
    is_file = Path(ref).suffix in (".yaml", ".yml") or Path(ref).is_file()
    return load_study(ref).name if is_file else check_name(ref)


def load_study(ref: str) -> StudySpec:
    """STUDY as given to `hpsearch run`: a path to a YAML file, or a built-in study's name."""
    path = Path(ref)
    if _is_file_ref(ref):
        if path.is_dir():
            raise UserError(f"{ref}: a folder, not a study file")
        if not path.is_file():
            raise UserError(f"{ref}: no such study file")
        return load_spec_file(path)
    builtins = builtin_studies()
    if ref not in builtins:
        raise UserError(f"unknown study {ref!r}; built-in: {', '.join(builtins)} (or give a path to a YAML file)")
    return load_spec_file(builtins[ref])


def sweep_study(ref: str, **overrides: Any) -> StudySpec:
    """STUDY with `hpsearch run`'s flag overrides, checked for a sweep. Plain data (pydantic and yaml), so
    `run` refuses a malformed study in a second, before torch, Ray and MLflow load. Raises UserError.

    A sweep searches something: with an empty `space` the sampler has nothing to suggest (Ray's searcher
    raised after the run's records were written). One configuration is a one-choice categorical."""
    spec = with_overrides(load_study(ref), **overrides)
    if not spec.space:
        raise UserError(
            f"{ref}: space: empty; a study searches at least one hyperparameter (to train one "
            "configuration, give a parameter one choice: {type: categorical, choices: [VALUE]})"
        )
    return spec
