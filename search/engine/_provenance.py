"""What a sweep's parent run records about itself: the study's settings as params, and where the sweep came
from (versions, the trainable's git commit, the data) as tags, so a result can be traced and run again."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studies import StudySpec
from tracking import tags as T

if TYPE_CHECKING:
    from ._plan import Plan


def spec_params(spec: StudySpec, plan: Plan) -> dict[str, Any]:
    return {
        "trainable": spec.trainable,
        "metric": plan.metric,
        "mode": plan.mode,
        "trials": spec.trials,
        "hours": spec.hours,
        "max_t": spec.asha.max_t if spec.asha else spec.max_t,
        "asha": spec.asha is not None,
        # Only under seconds, so that an epochs run's params are what they were before the option existed.
        **({"budget": "seconds", "max_epochs": spec.asha.max_epochs} if spec.max_seconds else {}),
        "grace_period": spec.asha.grace_period if spec.asha else None,
        "reduction_factor": spec.asha.reduction_factor if spec.asha else None,
        "cpus_per_trial": spec.resources.cpus,
        "gpus_per_trial": spec.resources.gpus,
        "max_concurrent": spec.max_concurrent,
        "sampler": spec.sampler,
        "seed": spec.seed,
        "split_seed": spec.split_seed,
        "max_failures": spec.max_failures,
        "keep_checkpoints": spec.keep_checkpoints,
    }


def provenance(plan: Plan, fixed: dict) -> dict[str, str]:
    from ..cluster._ship import versions

    tags = {T.SPLIT_SEED: str(plan.spec.split_seed), T.PYTHON: platform.python_version()}
    tags.update({T.VERSION + pkg: v for pkg, v in versions().items()})
    commit = _git_commit(plan.trainable.code or plan.trainable.train)
    if commit:
        tags[T.GIT_COMMIT] = commit
    if plan.trainable.data_info is not None:
        for k, v in plan.trainable.data_info(fixed).items():
            tags[T.DATA + k] = str(v)
    return tags


def _git_commit(function) -> str | None:
    """The commit of the git repository holding the trainable's code (with `-dirty` if it has uncommitted
    changes), or None where the code is not in a git repository."""
    import inspect
    import subprocess

    try:
        folder = Path(inspect.getsourcefile(function) or "").resolve().parent
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, TypeError, subprocess.SubprocessError):
        return None
