"""What a study is (spec, validation, the built-in catalog) and how to query one.

A study is plain data: loading one imports pydantic and yaml, not MLflow. The queries (`results`, `summary`,
`study_run`, `flat_results`) read MLflow through `tracking`, so they are imported on first use.
"""

from ._catalog import builtin_studies, load_study, study_name, sweep_study
from ._diagnose import Diagnosis, diagnose
from ._figures import readable
from ._spec import (
    NAME_PATTERN,
    SAMPLERS,
    Asha,
    CategoricalParam,
    FloatParam,
    IntParam,
    Resources,
    StudySpec,
    check_name,
    load_spec_file,
    parse_spec,
    spec_changes,
    spec_digest,
    spec_text,
    with_overrides,
)
from ._summary import STATES, StudySummary, headline, short_value
from .errors import UserError

__all__ = [
    "headline",
    "NAME_PATTERN",
    "SAMPLERS",
    "STATES",
    "StudySummary",
    "Asha",
    "CategoricalParam",
    "Diagnosis",
    "FloatParam",
    "IntParam",
    "Resources",
    "StudySpec",
    "UserError",
    "builtin_studies",
    "check_name",
    "diagnose",
    "flat_results",
    "load_spec_file",
    "load_study",
    "parse_spec",
    "readable",
    "results",
    "short_value",
    "spec_changes",
    "spec_digest",
    "spec_text",
    "study_name",
    "study_run",
    "summary",
    "sweep_study",
    "with_overrides",
]

_QUERIES = {"flat_results", "results", "study_run", "summary"}  # in _results.py, which imports tracking (MLflow)


def __getattr__(name: str):
    if name in _QUERIES:
        from . import _results

        return getattr(_results, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
