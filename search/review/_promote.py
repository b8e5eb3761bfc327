"""`hpsearch promote`: which model of a study goes to the Model Registry, on what evidence.

Without flags, the study's best checkpoint (logged and tested when the sweep finished). With `--candidates K`
the best K configurations are retrained first (`--reseeds S` other seeds, or `--folds F` cross-validation folds:
search/review/_reseed.py) and the best mean wins; its best checkpoint is tested once (search/review/_single.py). With
`--ensemble N` an ensemble is chosen on held-out predictions too (search/review/_ensemble.py), and whichever of the
single model and the ensemble is better there is tested, once, and registered.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from typing import Any

import studies
import tracking
from studies import UserError
from studies.words import FINISHED, rank_key
from tracking import tags as T

_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def check_flags(alias: str, name: str, candidates, reseeds, folds, ensemble) -> None:
    """Every refusal that needs no records: one line each."""
    if not _ALIAS.match(alias) or re.fullmatch(r"v\d+|latest", alias):
        raise UserError(f"--alias: {alias!r} is not allowed: letters, digits, '-', '_' (not 'latest' or v<N>)")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UserError(f"--name: {name!r} is not allowed: letters, digits, '.', '-' and '_' only")
    if folds is not None and reseeds is not None:
        raise UserError("--folds and --reseeds: choose one (with --folds each fold already trains with its own seed)")
    if candidates is None and (folds is not None or reseeds is not None):
        raise UserError(
            f"{'--folds' if folds is not None else '--reseeds'} needs --candidates K: the configurations to retrain"
        )
    if candidates is not None and candidates < 1:
        raise UserError(f"--candidates: {candidates} is not allowed: at least 1")
    if ensemble is not None and ensemble < 2:
        raise UserError(f"--ensemble: {ensemble} is not allowed: an ensemble picks at least 2 members")


def promote(
    study: str,
    alias: str = "champion",
    name: str | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    candidates: int | None = None,
    reseeds: int | None = None,
    out=None,
    address: str | None = None,
    folds: int | None = None,
    ensemble: int | None = None,
) -> dict[str, Any]:
    """Register the study's best model in the Model Registry and point `alias` at it. With `candidates`, first
    retrain the best K configurations, with `reseeds` other seeds (default 2) or on `folds` cross-validation
    folds, and promote the best mean. With `ensemble`, also build an ensemble of at most that many picks on
    held-out predictions and promote it when it is better there."""
    from ..cluster._locations import resolve

    out = out or sys.stderr
    tracking_uri = resolve(tracking_uri=tracking_uri).tracking_uri
    name = name or studies.check_name(study)
    check_flags(alias, name, candidates, reseeds, folds, ensemble)
    store, parent = studies.study_run(study, tracking_uri, run_id)
    rows = tracking.trial_rows(store, parent)
    if not any(r["state"] in FINISHED for r in rows):
        raise UserError(f"study {study!r} has no completed or pruned trial to promote (run {parent.info.run_id})")
    ptags = parent.data.tags
    if not ptags.get(T.MODEL_URI) and (candidates is None or ptags.get(T.NO_MODEL)):
        why = ptags.get(T.NO_MODEL, "the trainable has no export hook")  # retraining would not help
        raise UserError(f"study {study!r}: run {parent.info.run_id} logged no servable model: {why}")
    if candidates is None and ensemble is None:
        return _register(store, study, parent, name, alias, _study_best(parent, rows), {})
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends it like Ctrl-C
    try:
        evidence = _with_evidence(store, study, parent, rows, candidates, reseeds, folds, ensemble, out, address)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return _register(store, study, parent, name, alias, *evidence)


def _study_best(parent, rows) -> dict[str, Any]:
    ptags = parent.data.tags
    best = next((r for r in rows if r["trial_id"] == ptags.get(T.BEST_TRIAL)), None)
    return {
        "trial_id": ptags.get(T.BEST_TRIAL, ""),
        "params": best["params"] if best else {},
        "val_value": parent.data.metrics.get(T.BEST_VALUE, ""),
        "digest": ptags.get(T.CHECKPOINT_DIGEST, ""),
        "test_metrics": {k: v for k, v in parent.data.metrics.items() if k.startswith("test_")},
        "model_uri": ptags.get(T.MODEL_URI),
    }


def _with_evidence(store, study, parent, rows, candidates, reseeds, folds, ensemble, out, address):
    """Retrain the candidates (if asked), choose between the single best and an ensemble (if asked) on
    held-out data, and log and test the chosen one once. Returns (what is registered, the evidence)."""
    from . import _ensemble, _single

    trainable = _trainable(parent)
    metric, mode = parent.data.tags.get(T.METRIC), parent.data.tags.get(T.MODE, "max")
    if ensemble is not None:
        _ensemble.refuse(trainable, metric, ensemble)
    runs = {r["trial_id"]: r["run_id"] for r in rows}
    store, parent, ranked, winner = _candidates(store, study, parent, rows, candidates, reseeds, folds, out, address)
    chosen = _single.best_checkpoint(store, parent, winner, runs, mode, own_only=candidates is None)
    evidence: dict[str, Any] = {"compute_s": sum(r.seconds for c in ranked for r in c.retrainings)}
    if candidates is not None:
        evidence |= _retraining_evidence(parent, ranked, winner, folds)
    picked = None
    if ensemble is not None:
        picked = _choose_ensemble(store, parent, rows, trainable, ranked, chosen, metric, mode, ensemble, folds)
        evidence["held_out"] = {"single": picked.single if picked else None, "ensemble": picked and picked.held_out}
        _say_held_out(out, metric, picked, _ensemble.wins(picked, mode))
    if _ensemble.wins(picked, mode):
        model_uri, tests, _, cost = _ensemble.log_ensemble(store, study, parent, trainable, picked, chosen)
        evidence |= {"kind": tracking.ENSEMBLE, "members": picked.lineage(), "cost": cost}
        digest, val_value = picked.digest, picked.held_out
    else:
        model_uri, tests, _, digest = _single.log_chosen(store, study, parent, chosen, trainable)
        val_value = chosen.value
        evidence["kind"] = tracking.SINGLE
    return {
        "trial_id": winner.trial_id,
        "params": chosen.config,
        "val_value": val_value,
        "digest": digest,
        "test_metrics": tests,
        "model_uri": model_uri,
        "chosen": winner,
    }, evidence


def _trainable(parent):
    """The study's trainable, whose hooks promotion runs."""
    from trainables import get_trainable

    try:
        return get_trainable(parent.data.params["trainable"])
    except LookupError as exc:  # a user's module that does not import from here
        raise UserError(f"{exc} (promote runs the trainable's hooks: start it where the study's run started)") from None


def _candidates(store, study, parent, rows, candidates, reseeds, folds, out, address):
    """(store, parent run as read after any retraining, the candidates ranked, the winner): the best K
    configurations retrained with `candidates`, else the study's logged best alone."""
    from ..cluster._locations import resolve
    from . import _reseed

    uri = None if store.embedded else store.tracking_uri  # the store this promotion reads, for the rereads below
    if candidates is None:
        _, _, found = _reseed.find_candidates(study, len(rows), uri, parent.info.run_id)
        best = parent.data.tags.get(T.BEST_TRIAL)  # the study's logged best is the single model here
        winner = next((c for c in found if c.trial_id == best), found[0])
        return store, parent, [winner], winner
    reseeds = reseeds if reseeds is not None or folds is not None else 2
    address = resolve(address=address).address
    return _reseed.retrain_candidates(
        study, candidates, reseeds, uri, parent.info.run_id, out, address=address, folds=folds
    )


def _retraining_evidence(parent, ranked, winner, folds) -> dict[str, Any]:
    """Each retrained candidate's mean, spread and values against its single-split value."""
    evidence: dict[str, Any] = {
        "candidates": [
            {
                "trial_id": c.trial_id,
                "mean": c.mean,
                "std": c.std,
                "values": c.values,
                "single_split": c.original,
                "chosen": c is winner,
            }
            for c in ranked
        ],
        "single_best": parent.data.tags.get(T.BEST_TRIAL),
    }
    evidence["folds" if folds else "seeds"] = folds or len(winner.values)
    return evidence


def _choose_ensemble(store, parent, rows, trainable, ranked, chosen, metric, mode, size, folds):
    from trainables import held_score

    from . import _ensemble

    if folds:
        units, targets = _ensemble.fold_units(store, trainable, ranked)
        single = next((u for u in units if u.name == chosen.candidate.trial_id), None)
        if single is None:
            return None  # the winner's folds did not all train: no out-of-fold value to compare with
        value = held_score(trainable.task, metric, single.outputs, targets)
    else:
        keep = int(parent.data.params.get("keep_checkpoints") or 3)
        ordered = sorted(rows, key=lambda r: rank_key(r["metric"], mode))
        kept = _ensemble.kept_members(store, parent, ordered, keep, _checkpoint_of(store, parent))
        units, targets = _ensemble.model_units(store, trainable, ranked, kept)
        held = trainable.predict(chosen.config, chosen.state)
        value = held_score(trainable.task, metric, held.outputs, held.targets)
    return _ensemble.select(trainable, metric, mode, units, targets, size, value)


def _checkpoint_of(store, parent):
    from ._reseed import original_checkpoint

    return lambda row: original_checkpoint(store, parent, row["trial_id"], row["trial_dir"])


def _say_held_out(out, metric: str, picked, won: bool) -> None:
    if picked is None:
        print("ensemble: fewer than two models with held-out predictions; the single model stands", file=out)
        return
    distinct = len({m.name for m in picked.members})
    verdict = "promoted" if won else "not better: the single model stands"
    print(
        f"ensemble of {distinct} models: held-out {metric} {picked.held_out:.4f} against the single model's "
        f"{picked.single:.4f}: {verdict}",
        file=out,
        flush=True,
    )


def _register(store, study: str, parent, name: str, alias: str, chosen: dict, evidence: dict) -> dict[str, Any]:
    """Register the chosen model with its lineage as version tags, and set the alias."""
    ptags = parent.data.tags
    winner = chosen.pop("chosen", None)
    lineage = {
        "study": study,
        "run_id": parent.info.run_id,
        "trial_id": chosen["trial_id"],
        "params": json.dumps(chosen["params"], sort_keys=True),
        "metric": ptags.get(T.METRIC, ""),
        "val_value": str(chosen["val_value"]),
        "checkpoint_sha256": chosen["digest"],
        tracking.MODEL_KIND: evidence.get("kind", tracking.SINGLE),
        **{
            k.removeprefix("hpsearch."): v
            for k, v in ptags.items()
            if k.startswith((T.DATA, T.VERSION)) or k == T.GIT_COMMIT
        },
        "split_seed": ptags.get(T.SPLIT_SEED, ""),
        **{k: repr(v) for k, v in chosen["test_metrics"].items()},
        **_evidence_tags(winner, evidence),
    }
    description = (
        f"study {study}, trial {lineage['trial_id']}: {lineage['metric']}={lineage['val_value']}"
        + (
            f" (mean {winner.mean:.4f} +- {winner.std:.4f} over {len(winner.values)})"
            if winner and "candidates" in evidence
            else ""
        )
        + (
            "; an ensemble of " + str(lineage.get("ensemble_size")) + " models"
            if evidence.get("kind") == tracking.ENSEMBLE
            else ""
        )
        + "; "
        + studies.headline(chosen["test_metrics"])
    )
    info = tracking.register_model(store, chosen["model_uri"], name, alias, lineage, description)
    return {
        **info,
        "source": chosen["model_uri"],
        "run_id": parent.info.run_id,
        "trial_id": chosen["trial_id"],
        "test_metrics": chosen["test_metrics"],
        "kind": evidence.pop("kind", tracking.SINGLE),
        **evidence,
    }


def _evidence_tags(winner, evidence: dict) -> dict[str, str]:
    tags = {}
    if winner is not None and "candidates" in evidence:
        tags |= {"val_mean": repr(winner.mean), "val_std": repr(winner.std)}
        tags |= {"folds": str(evidence["folds"])} if "folds" in evidence else {"seeds": str(len(winner.values))}
    if "held_out" in evidence:
        held = evidence["held_out"]
        tags |= {f"held_out_{k}": repr(v) for k, v in held.items() if v is not None}
    if evidence.get("kind") == tracking.ENSEMBLE:
        tags |= {"members": json.dumps(evidence["members"]), "ensemble_size": str(len(evidence["members"]))}
    return tags
