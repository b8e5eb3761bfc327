"""The one place where a study's search space becomes Optuna distributions.

Our bounds are inclusive; Optuna's Float/IntDistribution are inclusive too, so the conversion is direct
(unlike `tune.randint`, whose upper bound is exclusive — we never go through Tune's own space types).
"""

from __future__ import annotations

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from studies import CategoricalParam, FloatParam, IntParam, StudySpec


def to_distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for name, p in spec.space.items():
        if isinstance(p, FloatParam):
            out[name] = FloatDistribution(p.low, p.high, log=p.log)
        elif isinstance(p, IntParam):
            out[name] = IntDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, CategoricalParam):
            out[name] = CategoricalDistribution(tuple(p.choices))
        else:  # pragma: no cover - the spec's discriminated union admits nothing else
            raise TypeError(f"unsupported parameter type {type(p).__name__}")
    return out
