"""The one place where a study's search space becomes Optuna's: distributions, a define-by-run function
for conditional spaces, and the grid for the grid sampler.

Our bounds are inclusive; Optuna's Float/IntDistribution are inclusive too, so the conversion is direct
(unlike `tune.randint`, whose upper bound is exclusive — we never go through Tune's own space types).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from studies import CategoricalParam, FloatParam, IntParam, StudySpec


def to_distribution(p) -> BaseDistribution:
    if isinstance(p, FloatParam):
        return FloatDistribution(p.low, p.high, log=p.log)
    if isinstance(p, IntParam):
        return IntDistribution(p.low, p.high, log=p.log, step=p.step)
    if isinstance(p, CategoricalParam):
        return CategoricalDistribution(tuple(p.choices))
    raise TypeError(f"unsupported parameter type {type(p).__name__}")  # pragma: no cover


def to_distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    return {name: to_distribution(p) for name, p in spec.space.items()}


def is_conditional(spec: StudySpec) -> bool:
    return any(p.when for p in spec.space.values())


def applies(param, sampled: dict[str, Any]) -> bool:
    """Whether a (maybe conditional) parameter exists, given the values sampled before it."""
    return all(sampled.get(parent, _ABSENT) in allowed for parent, allowed in param.condition().items())


_ABSENT = object()


class DefineByRun:
    """For conditional spaces: sample in the spec's order, skipping parameters whose `when` fails, so a
    trial without SGD has no momentum at all (not an ignored one). A class, not a closure, because Ray
    pickles the searcher (and so this) into its experiment state."""

    def __init__(self, spec: StudySpec):
        self.spec = spec

    def __call__(self, trial) -> None:
        sampled: dict[str, Any] = {}
        for name, p in self.spec.space.items():
            if not applies(p, sampled):
                continue
            # The public suggest_* calls: Ray's OptunaSearch captures the values through them.
            if isinstance(p, FloatParam):
                sampled[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
            elif isinstance(p, IntParam):
                sampled[name] = trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
            else:
                sampled[name] = trial.suggest_categorical(name, p.choices)


def grid(spec: StudySpec) -> dict[str, list]:
    """The grid sampler's values per parameter."""
    out: dict[str, list] = {}
    for name, p in spec.space.items():
        if isinstance(p, CategoricalParam):
            out[name] = list(p.choices)
        elif p.values is not None:
            out[name] = [int(v) for v in p.values] if isinstance(p, IntParam) else list(p.values)
        else:
            points = (np.geomspace if p.log else np.linspace)(p.low, p.high, p.grid_points)
            if isinstance(p, IntParam):
                out[name] = sorted({int(round(v)) for v in points})
            else:
                out[name] = [float(v) for v in points]
    return out


def grid_size(spec: StudySpec) -> int:
    return int(np.prod([len(v) for v in grid(spec).values()])) if spec.space else 1
