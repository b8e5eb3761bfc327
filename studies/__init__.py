"""What a study is (spec, validation, the built-in catalog) and how to query one."""

from ._catalog import builtin_studies, load_study
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
    with_overrides,
)
from ._results import results, study_run
from .errors import UserError

__all__ = [
    "NAME_PATTERN",
    "SAMPLERS",
    "Asha",
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "Resources",
    "StudySpec",
    "UserError",
    "builtin_studies",
    "check_name",
    "load_spec_file",
    "load_study",
    "parse_spec",
    "results",
    "study_run",
    "with_overrides",
]
