"""`hpsearch check STUDY`: the preflight before an overnight sweep, on one configuration of the study (its
fixed values, and the middle of each searched range), plus what the study's budget buys on this machine."""

from __future__ import annotations

import math

import studies
from studies import UserError
from trainables import FAIL, PASS, WARN, Check, data_sanity, layer_shapes, lr_range, overfit_one_batch

from ._inputs import study_trainable, trial_inputs


def middle(param):
    """A representative value of a searched parameter: the (geometric, with log) middle of its range, the
    middle of its grid values, or the first choice."""
    if getattr(param, "values", None):
        return param.values[len(param.values) // 2]
    if param.type == "categorical":
        return param.choices[0]
    low, high = param.low, param.high
    value = math.sqrt(low * high) if param.log else (low + high) / 2
    return int(round(value)) if param.type == "int" else value


def check(study: str, tracking_uri: str | None = None, **overrides) -> tuple[list[Check], dict]:
    """`tracking_uri`: where an `encoder_from: STUDY` finds that study's best checkpoint; the flag, else
    the environment's or the config file's, as every command resolves it."""
    from ..cluster._locations import resolve

    spec = studies.with_overrides(studies.load_study(study), **overrides)
    trainable, _, _ = study_trainable(spec, study)
    if trainable.setup is None:
        raise UserError(f"trainable {trainable.name} has no setup hook, which `check` needs (see README)")
    searched = {name: middle(p) for name, p in spec.space.items()}
    inputs = trial_inputs(spec, trainable, study, tracking_uri=resolve(tracking_uri=tracking_uri).tracking_uri)
    config = {
        **trainable.defaults,
        **spec.fixed,
        **searched,
        "epochs": spec.max_t,
        "split_seed": spec.split_seed,
        **inputs,
    }
    setup = trainable.setup(config)
    model = setup.model()
    checks = [data_sanity(setup, model)]
    if checks[0].status == FAIL:  # training on a broken data set tells nothing (and may crash)
        return checks + [
            Check(name, FAIL, ["not run: fix the data first"])
            for name in ("shapes", "overfit one batch", "lr range", "estimate")
        ], config
    checks.append(layer_shapes(model, setup.train.x[:8]))
    checks.append(overfit_one_batch(setup, float(config.get("lr", 1e-3))))
    lr_param = spec.space.get("lr")
    spec_range = (lr_param.low, lr_param.high) if lr_param is not None and lr_param.type == "float" else None
    batch = int(config.get("batch_size", 64))
    lr_check, step_s = lr_range(setup, batch, spec_range)
    checks.append(lr_check)
    checks.append(_estimate(spec, len(setup.train), batch, step_s))
    return checks, config


def asha_epochs(max_t: float, grace: float, rf: float) -> float:
    """Expected epochs per trial under ASHA (seconds, where the rungs count seconds): a 1/rf share of the
    trials reaches each next rung."""
    rungs, r = [], grace
    while r < max_t:
        rungs.append(r)
        r *= rf
    rungs.append(max_t)
    expected, previous = 0.0, 0
    for k, rung in enumerate(rungs):
        expected += (rung - previous) / rf**k
        previous = rung
    return expected


def _estimate(spec, n_train: int, batch: int, step_s: float) -> Check:
    epoch_s = step_s * math.ceil(n_train / batch)
    trial_s = epoch_s * spec.max_t
    slots = max(1, spec.max_concurrent)
    lines = [
        f"about {epoch_s:.2f} s per epoch ({n_train} examples, batch {batch}), {trial_s:.1f} s per trial at "
        f"{spec.max_t} epochs, on this machine, {slots} at a time"
    ]
    if spec.asha is None:
        lines.append(
            f"{spec.trials} trials: at most {spec.trials * trial_s / slots / 60:.1f} min (training only; add start-up)"
        )
        return Check("estimate", PASS, lines)
    asha = spec.asha
    if spec.max_seconds:
        full_s, asha_s = _seconds_budget(spec, epoch_s, trial_s, lines)
        average = f"{asha_s:.1f} s of training per trial on average"
    else:
        full_s, epochs = trial_s, asha_epochs(asha.max_t, asha.grace_period, asha.reduction_factor)
        asha_s, average = epochs * epoch_s, f"{epochs:.1f} epochs per trial on average"
    if spec.hours:
        budget = spec.hours * 3600 * slots
        lines.append(
            f"{spec.hours:g} h buy about {budget / full_s:.0f} trials at full fidelity, or about "
            f"{budget / asha_s:.0f} with ASHA ({average})"
        )
    full, with_asha = spec.trials * full_s / slots, spec.trials * asha_s / slots
    lines.append(
        f"{spec.trials} trials: about {full / 60:.1f} min at full fidelity, {with_asha / 60:.1f} min "
        f"with ASHA (training only; add start-up)"
    )
    return Check("estimate", PASS, lines)


def _seconds_budget(spec, epoch_s: float, trial_s: float, lines: list[str]) -> tuple[float, float]:
    """Under asha.budget: seconds, (a trial's seconds at full fidelity, its expected seconds with ASHA), saying
    where this configuration stops in `lines`."""
    asha = spec.asha
    full_s = min(trial_s, spec.max_seconds)  # a trial ends at max_t seconds or at max_epochs, what comes first
    lines.append(
        f"budget in seconds of training: a trial stops at {spec.max_seconds:g} s or {spec.max_t} epochs, "
        f"here after {full_s / epoch_s:.1f} epochs ({full_s:.1f} s); rungs from {asha.grace_period:g} s"
    )
    if full_s < spec.max_seconds:
        lines.append(
            f"max_epochs ends this configuration before max_t: time decides only for slower ones; "
            f"to let time decide here too, raise max_epochs to about {math.ceil(spec.max_seconds / epoch_s)}"
        )
    return full_s, asha_epochs(full_s, min(asha.grace_period, full_s), asha.reduction_factor)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


__all__ = ["FAIL", "PASS", "WARN", "check", "exit_code"]
