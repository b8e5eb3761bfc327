"""What the driver knows of each trial (its progress, configuration and outcome), and the checkpoints kept for
the best of them. Plain data: both are saved with Ray's experiment snapshots and restored on `--resume`."""

from __future__ import annotations

from studies.words import COMPLETED, FAILED, PRUNED, STOPPED, rank_key

from ._states import TrialProgress


class Outcomes:
    """Each trial's progress, configuration and (once it has ended) outcome; which ended trials rank best."""

    def __init__(self, metric: str, mode: str, max_t: int, max_seconds: float | None = None):
        self.metric, self.mode, self.max_t = metric, mode, max_t
        self.max_seconds = max_seconds  # ASHA's max_t under budget: seconds: a trial there has completed
        self.progress: dict[str, TrialProgress] = {}
        self.configs: dict[str, dict] = {}
        self.outcomes: dict[str, tuple[str, str | None]] = {}  # trial_id -> (state, reason), once it has ended

    def of(self, trial_id: str) -> TrialProgress:
        return self.progress.setdefault(trial_id, TrialProgress(self.metric, self.mode))

    def started(self, trial_id: str, config: dict) -> None:
        self.configs[trial_id] = dict(config)
        self.of(trial_id)

    def length(self, config: dict) -> int:
        """A trial's length: its own `epochs` (searched when ASHA is off), else max_t."""
        return int(config.get("epochs", self.max_t))

    def decide(
        self, trial_id: str, config: dict, errored: bool, error: str | None = None, halted: str | None = None
    ) -> tuple[str, str | None]:
        """The (state, reason) of a trial that has ended (search/engine/_states.py decides)."""
        return self.of(trial_id).outcome(errored, self.length(config), error, halted, self.max_seconds)

    def settle(self, trial_id: str, outcome: tuple[str, str | None]) -> bool:
        """Record an outcome found after a crash, unless the trial has one already; whether it was new."""
        if trial_id in self.outcomes:
            return False
        self.outcomes[trial_id] = outcome
        return True

    def ranked(self) -> list[str]:
        """Ended trials that did not fail (completed, pruned or stopped), best first; ties keep start order."""
        candidates = [
            tid
            for tid, p in self.progress.items()
            if p.best_value is not None and self.outcomes.get(tid, (None,))[0] in (COMPLETED, PRUNED, STOPPED)
        ]
        return sorted(candidates, key=lambda tid: rank_key(self.progress[tid].best_value, self.mode))

    def best_trial(self) -> str | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def counts(self) -> dict[str, int]:
        counts = {COMPLETED: 0, PRUNED: 0, STOPPED: 0, FAILED: 0}
        for state, _ in self.outcomes.values():
            counts[state] += 1
        return counts


class CheckpointCleanup:
    """Keeps the checkpoints of the best `keep` ended trials (and every running trial's latest, which Ray
    manages); deletes the rest as trials are beaten, so a 200-trial study holds about keep + concurrency
    checkpoints. `keep` None: every trial's is kept."""

    def __init__(self, keep: int | None):
        self.keep = keep
        self.latest: dict[str, object] = {}  # trial_id -> its latest (= best) ray Checkpoint

    def saved(self, trial_id: str, checkpoint) -> None:
        # Trials checkpoint only when their best improves, and Ray keeps one: the latest is the best.
        self.latest[trial_id] = checkpoint

    def collect(self, outcomes: Outcomes) -> None:
        if self.keep is None:
            return
        keep = set(outcomes.ranked()[: self.keep])
        for tid in list(self.latest):
            if tid in outcomes.outcomes and tid not in keep:
                checkpoint = self.latest.pop(tid)
                try:
                    checkpoint.filesystem.delete_dir(checkpoint.path)
                except (OSError, FileNotFoundError):
                    pass  # already gone: nothing to free
