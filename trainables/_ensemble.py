"""Several trained models served as one: `Ensemble`, the same arithmetic on outputs (`combine`), and the forward
selection with replacement that picks its members and weights (`greedy_select`, Caruana et al. 2004).

Classifiers are averaged as probabilities, not logits: a weighted mean of softmaxes is a proper mixture whatever
scale each member's logits have. Its log is served, so that argmax and softmax of the ensemble's output behave
as a single model's logits do, and the exp of the output is the averaged probability.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from studies.words import better

from ._tasks import CUSTOM, TASKS

# Averaged as probabilities; every other task's outputs are averaged as they are.
_PROBABILITIES = ("classification", "segmentation")
# The log of a probability is taken of at least this (float32's smallest normal): finite, and far below any
# probability a softmax of finite logits yields in practice.
_TINY = float(np.finfo(np.float32).tiny)


def _weights(weights: Sequence[float], members: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != members or members == 0:
        raise ValueError(f"an ensemble needs one weight per member: {members} members, {len(w)} weights")
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"ensemble weights must be finite, non-negative and not all zero, not {w.tolist()}")
    return w / w.sum()


def _check_task(task: str) -> None:
    if task not in (*TASKS, CUSTOM):
        raise ValueError(f"task must be one of {', '.join((*TASKS, CUSTOM))}, not {task!r}")


class Ensemble(nn.Module):
    """Members' served modules (raw inputs -> outputs, what `export(config, state)[0]` gives) as one module."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float], task: str):
        super().__init__()
        _check_task(task)
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(_weights(weights, len(members)), dtype=torch.float32))
        self.task = task
        self.probabilities = task in _PROBABILITIES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for i, member in enumerate(self.members):
            out = member(x).float()
            term = self.weights[i] * (torch.softmax(out, dim=1) if self.probabilities else out)
            total = term if total is None else total + term
        return torch.log(total.clamp_min(_TINY)) if self.probabilities else total


def _terms(task: str, outputs: np.ndarray) -> np.ndarray:
    """A member's contribution before weighting: its probabilities (classification) or its outputs."""
    out = np.asarray(outputs, dtype=np.float64)
    if task not in _PROBABILITIES:
        return out
    shifted = np.exp(out - out.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _finish(task: str, mean: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(mean, _TINY)) if task in _PROBABILITIES else mean


def combine(task: str, outputs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """`Ensemble.forward`'s arithmetic on the members' outputs (float64): what ensemble selection scores."""
    _check_task(task)
    w = _weights(weights, len(outputs))
    return _finish(task, sum(wi * _terms(task, out) for wi, out in zip(w, outputs)))


@dataclasses.dataclass(frozen=True)
class Selection:
    """The chosen ensemble: member name -> weight (summing to 1), its score, and the score after each step."""

    weights: dict[str, float]
    score: float
    path: list[float]


def _better(value: float, best: float | None, mode: str) -> bool:
    """`better`, where a NaN score never wins and anything beats a NaN best."""
    if math.isnan(value):
        return False
    return best is None or math.isnan(best) or better(value, best, mode)


def greedy_select(
    outputs: Mapping[str, np.ndarray],
    targets: np.ndarray,
    score: Callable[[np.ndarray], float],
    mode: str,
    size: int,
    task: str,
) -> Selection:
    """Forward selection with replacement (Caruana et al. 2004): from the empty ensemble, each of `size` steps
    adds the member whose addition scores best (ties: the earlier name); the prefix of steps with the best score
    (the earliest, on a tie) is kept. `score(combined outputs)` -> the metric; `targets` are the scored ones,
    given so that the caller's `score` and the outputs are checked to line up."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, not {mode!r}")
    if not outputs or size < 1:
        raise ValueError(f"ensemble selection needs at least one member and one step, not {len(outputs)} and {size}")
    _check_task(task)
    names = list(outputs)
    terms = [_terms(task, outputs[n]) for n in names]
    if any(len(t) != len(targets) for t in terms):
        raise ValueError(f"every member's outputs need one row per target ({len(targets)})")
    total, path, chosen = np.zeros_like(terms[0]), [], []
    for step in range(1, size + 1):
        best, pick = None, 0
        for j, term in enumerate(terms):
            value = float(score(_finish(task, (total + term) / step)))
            if _better(value, best, mode):
                best, pick = value, j
        total = total + terms[pick]
        path.append(best if best is not None else math.nan)
        chosen.append(pick)
    # The earliest step that no other step beats (a NaN step is beaten by any number).
    kept = 1 + next(i for i in range(size) if not any(_better(v, path[i], mode) for v in path))
    used = np.bincount(np.asarray(chosen[:kept]), minlength=len(names))
    weights = {name: float(c / kept) for name, c in zip(names, used) if c > 0}
    return Selection(weights, path[kept - 1], path)
