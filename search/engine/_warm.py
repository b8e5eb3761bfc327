"""Warm start: the best configurations of an earlier study, fitted to this study's space."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import studies
from studies import CategoricalParam, IntParam, StudySpec, UserError
from studies.words import FINISHED

from ..sampling._space import applies

SKIP = {"epochs", "split_seed", "seed"}  # set by the engine for every trial, never warm-started


def warm_points(spec: StudySpec, other: str, count: int, tracking_uri: str | None) -> tuple[list[dict], list[str]]:
    """(points to enqueue, one message per kind of change). Uses the other study's latest run, best first,
    trials that did not fail."""
    if count < 1:
        raise UserError(f"--warm-count: must be >= 1 (got {count})")
    frame = studies.results(other, tracking_uri=tracking_uri)
    rows = frame[frame["state"].isin(FINISHED)].head(count)
    if rows.empty:
        raise UserError(f"--warm-start: study {other!r} has no completed or pruned trial to start from")
    points, changes = [], defaultdict(list)
    for n, params in enumerate(rows["params"], 1):
        point = fit_to_space(spec, params, lambda what, n=n: changes[what].append(n))
        if point:
            points.append(point)
    messages = [f"warm start from {other}: {len(points)} configuration(s) enqueued"]
    for what, which in changes.items():
        messages.append(f"warm start: {what} (configuration {', '.join(map(str, which))})")
    return points, messages


def fit_to_space(spec: StudySpec, params: dict[str, Any], note) -> dict[str, Any]:
    point: dict[str, Any] = {}
    for name, value in params.items():
        if name in SKIP or name in spec.fixed:
            continue
        param = spec.space.get(name)
        if param is None:
            note(f"dropped {name}: not in this study's space")
            continue
        if isinstance(param, CategoricalParam):
            if value in param.choices:
                point[name] = value
            else:
                note(f"dropped {name}: value not among {param.choices}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            note(f"dropped {name}: not a number")
            continue
        clipped = min(max(value, param.low), param.high)
        if isinstance(param, IntParam):
            clipped = param.low + round((clipped - param.low) / param.step) * param.step
            clipped = int(min(clipped, param.high))
        if clipped != value:
            note(f"clipped {name} into {param.low}..{param.high}")
        point[name] = clipped
    for name, param in spec.space.items():  # a value whose condition no longer holds would be ignored
        if name in point and param.when and not applies(param, point):
            note(f"dropped {name}: its condition {param.when} does not hold")
            del point[name]
    return point
