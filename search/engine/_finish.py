"""Finishing a sweep: the best trial's checkpoint logged with the parent run, its servable model, one test
evaluation. Each step's outcome is a tag on the parent run (tracking.tags.FINISH + step) as soon as it is known,
so an error or a kill while finishing costs that step alone: `hpsearch run STUDY --resume` completes the steps
left, from the records, without running a trial. `hpsearch show` names what is missing."""

from __future__ import annotations

import dataclasses
import sys
import traceback
from pathlib import Path
from typing import Any

import tracking
from tracking import tags as T


@dataclasses.dataclass(frozen=True)
class Best:
    """The trial that finishing logs and tests: enough to do it again in a later process."""

    trial_id: str
    value: float
    epoch: int | None
    config: dict
    checkpoint: str | None  # the folder of its Ray checkpoint (its best epoch); None where it saved none


@dataclasses.dataclass
class Finished:
    model_uri: str | None = None
    test_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    left: list[str] = dataclasses.field(default_factory=list)  # steps that failed: `--resume` retries them


def record_sweep(recorder, callback) -> tuple[Best | None, dict[str, int]]:
    """At the sweep's end, in one write: the counts, the best trial, where its checkpoint is, and that the sweep
    is over. From here on a `--resume` only finishes."""
    best_id, counts = callback.best_trial(), callback.counts()
    tags: dict[str, Any] = {T.COUNT + k: v for k, v in counts.items()}
    tags[T.SWEPT] = "1"
    if best_id is None:
        recorder.set_parent_tags(tags)
        return None, counts
    progress, checkpoint = callback.progress[best_id], callback.checkpoints.get(best_id)
    best = Best(
        best_id,
        progress.best_value,
        progress.best_epoch,
        callback.configs[best_id],
        None if checkpoint is None else str(checkpoint.path),
    )
    tags[T.BEST_TRIAL] = best_id
    if best.checkpoint is not None:
        tags[T.BEST_CHECKPOINT] = best.checkpoint
    tracking.log_values(
        recorder.store, recorder.parent_id, metrics={T.BEST_VALUE: best.value}, tags=tags, client=recorder.client
    )
    return best, counts


def recorded_sweep(store, run) -> tuple[Best | None, dict[str, int]]:
    """What `record_sweep` wrote, read back for a `--resume` that only finishes."""
    tags = run.data.tags
    counts = {k.removeprefix(T.COUNT): int(v) for k, v in tags.items() if k.startswith(T.COUNT)}
    best_id = tags.get(T.BEST_TRIAL)
    if best_id is None:
        return None, counts
    row = next((r for r in tracking.trial_rows(store, run) if r["trial_id"] == best_id), {})  # {}: its run deleted
    return Best(
        best_id,
        run.data.metrics[T.BEST_VALUE],
        row.get("best_epoch"),
        row.get("params", {}),
        tags.get(T.BEST_CHECKPOINT),
    ), counts


def finish(plan, store, recorder, best: Best, done: dict[str, str], out) -> Finished:
    """Log the best trial's best epoch as a state_dict and a servable model, and test it once: the steps not in
    `done` (FINISH tags of an earlier attempt). A step that raises is said in one line and recorded as failed;
    the others still run. A checkpoint without a state_dict under "model", or a trainable with no export or
    evaluate hook, has nothing to do for that step ("none")."""
    result = Finished()
    record = _StepRecord(recorder, result)
    left = [step for step in T.FINISH_STEPS if not done.get(T.FINISH + step, "").startswith(("done", "none"))]
    state = _best_state(store, recorder, best, left, record, out)
    if state is None:
        return result
    digest = tracking.state_digest(state)
    if "checkpoint" in left:
        _log_checkpoint(plan, store, recorder, best, state, digest, record, out)
    if "export" in left:
        result.model_uri = _export(plan, store, recorder, best, state, record, out)
        if result.model_uri and done.get(T.FINISH + "export", "").startswith("failed"):
            recorder.client.delete_tag(recorder.parent_id, T.NO_MODEL)  # an earlier attempt's, now untrue
    if "test" in left:
        result.test_metrics = _test(plan, store, recorder, best, state, digest, record, out)
    if result.left:
        named = ", ".join(text for step, text in T.FINISH_STEPS.items() if step in result.left)
        print(
            f"finishing incomplete: {named}; the sweep's results are recorded: complete it with `hpsearch run "
            f"{plan.spec.name} --resume`",
            file=out,
        )
    return result


@dataclasses.dataclass
class _StepRecord:
    """A finishing step's outcome, tagged on the parent run as soon as it is known; a failed step is kept in
    `result.left` for `--resume` to retry."""

    recorder: Any
    result: Finished

    def __call__(self, step: str, outcome: str) -> None:
        self.recorder.set_parent_tags({T.FINISH + step: outcome[:1000]})
        if outcome.startswith("failed"):
            self.result.left.append(step)


def _best_state(store, recorder, best: Best, left: list[str], record: _StepRecord, out) -> dict | None:
    """The best epoch's state_dict; None where there is none to log or test (no checkpoint, an unreadable one, or
    one with no state_dict under "model"), with every step left recorded as why."""
    if best.checkpoint is None:
        print(f"trial {best.trial_id} saved no checkpoint: there is no best model to log or test", file=out)
        for step in left:
            record(step, "none: the best trial saved no checkpoint")
        return None
    try:
        state, saved = _state(store, recorder, best, logged="checkpoint" not in left)
    except Exception as exc:
        _said(out, "reading the best checkpoint", exc)
        for step in left:
            record(step, f"failed: {_line(exc)}")
        return None
    if state is None:
        reason = (
            f'trial {best.trial_id}\'s checkpoint has no state_dict under "model" (it has {saved}): no test '
            'evaluation or servable model; report checkpoint={"model": model.state_dict(), ...}'
        )
        print(reason, file=out)
        recorder.set_parent_tags({T.NO_MODEL: reason})
        for step in left:
            record(step, "none: the checkpoint has no state_dict")
    return state


def _log_checkpoint(plan, store, recorder, best: Best, state: dict, digest: str, record: _StepRecord, out) -> None:
    """The best epoch's state_dict with what it was trained and judged on, logged with the parent run."""
    try:
        payload = {
            "model": state,
            "config": best.config,
            "metric": plan.metric,
            "mode": plan.mode,
            "value": best.value,
            "trial_id": best.trial_id,
            "epoch": best.epoch,
        }
        tracking.log_best_checkpoint(store, recorder.parent_id, payload)
        recorder.set_parent_tags({T.CHECKPOINT_DIGEST: digest})
        record("checkpoint", "done")
    except Exception as exc:
        _said(out, "logging the best checkpoint", exc)
        record("checkpoint", f"failed: {_line(exc)}")


def _state(store, recorder, best: Best, logged: bool) -> tuple[dict | None, str]:
    """(the best epoch's state_dict or None, what the checkpoint holds): from the checkpoint logged with the run
    once finishing has logged it, else from Ray's."""
    import torch

    if logged:
        saved = tracking.load_best_checkpoint(store, recorder.parent_id)
    else:
        from ray import tune

        from ..scheduling._ray_reporter import CHECKPOINT_FILE

        with tune.Checkpoint(best.checkpoint).as_directory() as path:
            saved = torch.load(Path(path) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    state = saved.get("model") if isinstance(saved, dict) else None
    holds = str(sorted(saved)) if isinstance(saved, dict) else type(saved).__name__
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None, holds
    return state, holds


def _export(plan, store, recorder, best: Best, state, record, out) -> str | None:
    if plan.trainable.export is None:
        why = f"trainable {plan.trainable.name} has no export hook (trainables.from_model gives one)"
        recorder.set_parent_tags({T.NO_MODEL: why})
        record("export", f"none: {why}")
        return None
    try:
        model, example = plan.trainable.export(best.config, state)
        model_uri = tracking.log_servable_model(store, recorder.parent_id, model, example)
    except Exception as exc:
        why = (
            f"exporting the best model failed ({_line(exc)}); the best checkpoint is logged. Make the model "
            "traceable by torch.export (no data-dependent Python control flow), or give the trainable an export "
            "hook that returns one that is"
        )
        print(f"no servable model: {why}", file=out)
        recorder.set_parent_tags({T.NO_MODEL: why})
        record("export", f"failed: {_line(exc)}")
        return None
    recorder.set_parent_tags({T.MODEL_URI: model_uri})
    record("export", "done")
    return model_uri


def _test(plan, store, recorder, best: Best, state, digest: str, record, out) -> dict[str, float]:
    if plan.trainable.evaluate is None:
        record("test", f"none: trainable {plan.trainable.name} has no evaluate hook")
        return {}
    try:
        # The test split is read here, once per checkpoint (cached by digest), never for selection.
        metrics = tracking.cached_test_metrics(store, plan.spec.name, digest) or plan.trainable.evaluate(
            best.config, state, "test"
        )
        recorder.log_parent_metrics(metrics)
        recorder.set_parent_tags({T.TEST_DIGEST: digest})
    except Exception as exc:
        _said(out, "the test evaluation", exc)
        record("test", f"failed: {_line(exc)}")
        return {}
    record("test", "done")
    return metrics


def _line(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}".splitlines() or ["?"])[0][:300]


def _said(out, what: str, exc: BaseException) -> None:
    """The traceback on stderr (often a hook of the user's that raised), then one line on the run's output."""
    traceback.print_exception(exc, file=sys.stderr)
    print(f"finishing: {what} failed: {_line(exc)}", file=out)
