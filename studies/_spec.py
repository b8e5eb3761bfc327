"""What a study is: a YAML file validated into a frozen pydantic model.

Bounds are inclusive everywhere (`low` and `high` can both be sampled); the one conversion to Optuna's
distributions lives in `search/sampling/_space.py`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from .errors import UserError

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
SAMPLERS = ("tpe", "random", "grid", "gp", "cmaes", "qmc")
RESERVED_PARAMS = {
    "epochs": "set by asha.max_t (asha.max_epochs with budget: seconds; search or fix it with asha: off)",
    "split_seed": "set by the study's split_seed",
    "data_root": "set by the study's data_root (or --data-root)",
    "download": "set by the study's download",
    "encoder_checkpoint": "set by the study's encoder_from",
    "seed": "set per trial from the study's seed",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Scalar = bool | int | float | str


class _Param(_Strict):
    # Sample this parameter only when every named earlier parameter has one of the given values
    # (e.g. momentum only with optimizer: sgd); elsewhere the trial does not have it at all.
    when: dict[str, Scalar | list[Scalar]] | None = None

    def condition(self) -> dict[str, list]:
        return {k: v if isinstance(v, list) else [v] for k, v in (self.when or {}).items()}


class _Numeric(_Param):
    # For the grid sampler: explicit grid values, or a number of evenly spaced points (log-spaced
    # with log: true) from low to high inclusive.
    values: list[float] | None = Field(None, min_length=1)
    grid_points: int | None = Field(None, ge=2)

    def _check_grid(self):
        if self.values is not None and self.grid_points is not None:
            raise ValueError("give values or grid_points, not both")
        for v in self.values or []:
            if not self.low <= v <= self.high:
                raise ValueError(f"value {v} is outside low..high ({self.low}..{self.high})")


class FloatParam(_Numeric):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self):
        _check_bounds(self.low, self.high, self.log)
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite")
        self._check_grid()
        return self


class IntParam(_Numeric):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _bounds(self):
        _check_bounds(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("step must be 1 with log: true")
        self._check_grid()
        if self.values and any(v != int(v) for v in self.values):
            raise ValueError("values of an int parameter must be whole numbers")
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self):
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError("choices must be distinct")
        return self


def _check_bounds(low, high, log) -> None:
    if low > high:
        raise ValueError(f"low ({low}) must be <= high ({high})")
    if log and low <= 0:
        raise ValueError(f"log: true needs low > 0 (got low={low})")


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Asha(_Strict):
    # What the rungs count. `epochs`: each trial trains max_t epochs unless stopped. `seconds`: max_t and
    # grace_period are seconds of the trial's own training, so a configuration five times slower per epoch
    # reaches each rung with a fifth of the epochs; max_epochs caps each trial's epochs (its `epochs`).
    budget: Literal["epochs", "seconds"] = "epochs"
    max_t: int | float = Field(
        10, gt=0, allow_inf_nan=False, description="epochs (or seconds) a trial trains when never stopped"
    )
    grace_period: int | float = Field(
        1, gt=0, allow_inf_nan=False, description="epochs (or seconds) every trial gets before it can be stopped"
    )
    reduction_factor: float = Field(3, gt=1, allow_inf_nan=False, description="keep 1/reduction_factor at each rung")
    max_epochs: int | None = Field(None, ge=1, description="with budget: seconds, the epochs of a trial never stopped")

    @field_validator("max_t", "grace_period", mode="before")
    @classmethod
    def _number(cls, value):
        try:  # pydantic would name only the first type of int | float ("a valid integer")
            finite = math.isfinite(float(value))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise ValueError(f"a finite number (epochs, or seconds with budget: seconds), not {value!r}")
        return value

    @field_validator("max_t", "grace_period")
    @classmethod
    def _whole_epochs(cls, value, info):
        if info.data.get("budget", "epochs") == "seconds":
            return value
        if value != int(value) or value < 1:
            raise ValueError(
                f"a whole number of epochs >= 1 with budget: epochs, not {value!r} (seconds need asha.budget: seconds)"
            )
        return int(value)  # 20.0 is 20 epochs, as before seconds existed

    @model_validator(mode="after")
    def _grace(self):
        if self.budget == "seconds" and self.max_epochs is None:
            raise ValueError(
                "max_epochs is required with budget: seconds (each trial's epoch cap, a whole number >= 1)"
            )
        if self.budget == "epochs" and self.max_epochs is not None:
            raise ValueError(
                "max_epochs applies only with budget: seconds (with budget: epochs a trial trains max_t epochs)"
            )
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) must be <= max_t ({self.max_t})")
        return self

    @model_serializer(mode="wrap")
    def _written(self, handler):
        # An epochs study is written as before `budget` existed, so a sweep started then resumes (its spec
        # digest and logged spec compare equal).
        data = handler(self)
        if self.budget == "epochs":
            data.pop("budget", None)
            data.pop("max_epochs", None)
        return data

    @property
    def seconds(self) -> bool:
        return self.budget == "seconds"


class Resources(_Strict):
    cpus: float = Field(1, gt=0, allow_inf_nan=False, description="CPU cores per trial")
    gpus: float = Field(0, ge=0, allow_inf_nan=False, description="GPUs per trial; fractions pack trials onto one GPU")


class StudySpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    trainable: str = Field(min_length=1)
    description: str = ""
    metric: str | None = None  # None: the trainable's default metric
    mode: Literal["min", "max"] | None = None
    space: dict[str, Param] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    trials: int = Field(20, gt=0)
    hours: float | None = Field(None, gt=0, allow_inf_nan=False)
    # ASHA's rungs; `asha: off` (or null) runs every trial to its own `epochs`, which may then be searched
    asha: Asha | None = Field(default_factory=Asha)
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=0)  # retries of a trial whose code raised, from its last checkpoint
    keep_checkpoints: int = Field(3, ge=1)  # checkpoints kept of ended trials: the best K
    sampler: Literal["tpe", "random", "grid", "gp", "cmaes", "qmc"] = "tpe"
    # Seeds are numpy's: 0 to 2**32 - 1.
    seed: int = Field(0, ge=0, lt=2**32)  # seeds the sampler and every trial: same seed, same sweep (max_concurrent 1)
    split_seed: int = Field(
        0, ge=0, lt=2**32
    )  # seeds the data splits alone: sweeps with other seeds share a test split
    # Where image trainables read their data set (torchvision layouts); default $HPSEARCH_HOME/data
    data_root: str | None = None
    download: bool = False  # fetch a missing data set into data_root (needs a network)
    # Two-stage training (pretrain an autoencoder, then fine-tune its encoder in a classifier): a study whose
    # best checkpoint (or a checkpoint file) gives the encoder
    encoder_from: str | None = None

    @field_validator("asha", mode="before")
    @classmethod
    def _asha_off(cls, value):
        return None if value is False or value == "off" else value  # YAML reads a bare `off` as false

    @property
    def max_t(self) -> int:
        """The most epochs a trial trains, every trial's `epochs` under ASHA: ASHA's max_t (its max_epochs with
        budget: seconds, where max_t counts seconds), or without ASHA the (largest searched) `epochs`."""
        if self.asha is not None:
            return self.asha.max_epochs if self.asha.seconds else self.asha.max_t
        epochs = self.space.get("epochs")
        return int(epochs.high if epochs is not None else self.fixed["epochs"])

    @property
    def max_seconds(self) -> float | None:
        """Seconds of its own training after which a trial has completed: ASHA's max_t under budget: seconds."""
        return self.asha.max_t if self.asha is not None and self.asha.seconds else None

    @model_validator(mode="after")
    def _params(self):
        both = sorted(set(self.space) & set(self.fixed))
        if both:
            raise ValueError(f"{', '.join(both)} both searched (space) and fixed; pick one")
        for name, why in RESERVED_PARAMS.items():
            if name == "epochs" and self.asha is None:
                continue
            if name in self.space or name in self.fixed:
                raise ValueError(f"{name!r} cannot be in space or fixed: it is {why}")
        if self.asha is None:
            epochs = self.space.get("epochs", self.fixed.get("epochs"))
            if epochs is None:
                raise ValueError("asha: off: give epochs in fixed or space (a trial's length without ASHA)")
            if isinstance(epochs, BaseModel) and (epochs.type != "int" or epochs.when):
                raise ValueError("space.epochs: an int parameter, not conditional")
            if not isinstance(epochs, BaseModel) and (not isinstance(epochs, int) or epochs < 1):
                raise ValueError(f"fixed.epochs: a whole number >= 1, not {epochs!r}")
        seen: dict[str, Any] = {}
        for name, param in self.space.items():
            for parent, allowed in param.condition().items():
                if parent not in seen:
                    raise ValueError(f"space.{name}.when: {parent!r} must be a parameter listed before {name!r}")
                choices = getattr(seen[parent], "choices", None)
                bad = [v for v in allowed if choices is not None and v not in choices]
                if bad:
                    raise ValueError(f"space.{name}.when: {bad} not among {parent}'s choices {choices}")
            seen[name] = param
        if self.sampler == "grid":
            for name, param in self.space.items():
                if param.when:
                    raise ValueError(f"sampler grid: space.{name} is conditional; a grid needs a fixed space")
                if not isinstance(param, CategoricalParam) and param.values is None and param.grid_points is None:
                    raise ValueError(f"sampler grid: space.{name} needs values or grid_points")
        return self


def format_validation_error(exc: pydantic.ValidationError, source: str) -> str:
    """One line: the source, the field's dotted path and what is wrong (the first error is enough)."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if p not in ("float", "int", "categorical")]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "union_tag_invalid":
        msg = "type must be one of: float, int, categorical"
    elif err["type"] == "union_tag_not_found":
        msg = "missing type (float, int or categorical)"
    elif err["type"] == "string_pattern_mismatch":
        msg = f"{err['input']!r} is not allowed: use letters, digits, '-' and '_' only"
    where = ".".join(loc)
    return f"{source}: {where}: {msg}" if where else f"{source}: {msg}"


def parse_spec(data: Any, source: str) -> StudySpec:
    if not isinstance(data, dict):
        raise UserError(f"{source}: a study must be a YAML mapping of fields (name, trainable, space, ...)")
    try:
        return StudySpec.model_validate(data)
    except pydantic.ValidationError as exc:
        raise UserError(format_validation_error(exc, source)) from None


def load_spec_file(path: Path) -> StudySpec:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{source}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{source}: not UTF-8 text (byte {exc.start}); save the study file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}: YAML syntax error{where}: {problem}") from None
    return parse_spec(data, source)


# Flags of `hpsearch run` that override a spec field, flag -> dotted field.
OVERRIDES = {
    "trials": "trials",
    "hours": "hours",
    "max_concurrent": "max_concurrent",
    "gpus_per_trial": "resources.gpus",
    "seed": "seed",
    "data_root": "data_root",
}


def with_overrides(spec: StudySpec, **flags: Any) -> StudySpec:
    """The spec with the given `hpsearch run` flags applied and validated again."""
    data = spec.model_dump()
    for flag, value in flags.items():
        if value is None:
            continue
        *parents, leaf = OVERRIDES[flag].split(".")
        target = data
        for p in parents:
            target = target[p]
        target[leaf] = value
        try:
            StudySpec.model_validate(data)
        except pydantic.ValidationError as exc:
            msg = format_validation_error(exc, "").split(": ", 2)[-1]
            raise UserError(f"--{flag.replace('_', '-')}: {msg}") from None
    return StudySpec.model_validate(data)


def check_name(name: str) -> str:
    """A study name as typed on the command line: letters, digits, - and _ only (it names folders)."""
    if not re.match(NAME_PATTERN, name) or len(name) > 100:
        raise UserError(f"invalid study name {name!r}: use letters, digits, '-' and '_' only")
    return name


def spec_text(spec: StudySpec) -> str:
    """The effective spec as YAML: logged with each run, and what a --resume is compared against."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def spec_digest(spec: StudySpec) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def spec_changes(old_text: str, spec: StudySpec) -> list[str]:
    """`field: old -> new` for each field (dotted, e.g. asha.max_t) that differs from a logged spec."""

    def flat(value: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out or {prefix.rstrip("."): {}}
        return {prefix.rstrip("."): value}

    old, new = flat(yaml.safe_load(old_text) or {}), flat(yaml.safe_load(spec_text(spec)))
    missing = object()
    return [
        f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    ]
