"""The report's "Finalists": what promotion's retrainings say about each configuration it compared, and, where
the study's latest registered version is an ensemble, its members, their weights and the held-out values
that chose it.

Retrainings are child runs of the study's parent run, of kind `reseed` (other seeds, the same split) or
`fold` (one cross-validation fold each), tagged with the trial whose configuration they retrain, each with
its best validation value as the metric `best_value`. Only FINISHED ones count: the runs of a killed
promotion are no evidence.
"""

from __future__ import annotations

import dataclasses
import html
import math
import statistics
from collections.abc import Mapping

import tracking
from studies import readable
from studies.words import rank_key
from tracking import ENSEMBLE
from tracking import tags as T

from ._reseed import FOLD, RESEED

NOTHING = "Nothing was promoted with evidence yet: no finished retraining (`hpsearch promote --candidates K` "
NOTHING += "with --reseeds or --folds) in this run, and the study's latest registered version is no ensemble."


@dataclasses.dataclass(frozen=True)
class Finalist:
    trial_id: str  # the configuration's original trial
    kind: str  # RESEED or FOLD
    single: float | None  # the original trial's best: one split, one seed
    values: tuple[float, ...]  # each finished retraining's best validation value
    folds: int | None = None  # k, for fold runs: fewer values than k means some fold did not finish

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def evidence(self) -> str:
        """`3 seeds`, or `4 of 5 folds` where a fold did not finish."""
        if self.kind == FOLD:
            k = self.folds or len(self.values)
            return f"{len(self.values)} of {k} folds" if k != len(self.values) else f"{k} folds"
        return f"{len(self.values)} seed{'s' if len(self.values) > 1 else ''}"


def finalists(store, parent, singles: Mapping[str, float | None], mode: str) -> list[Finalist]:
    """One Finalist per configuration and kind of retraining found under `parent`, best mean first."""
    values: dict[tuple[str, str], list[float]] = {}
    folds: dict[tuple[str, str], int] = {}
    for run in tracking.child_runs(store, parent.info.experiment_id, parent.info.run_id):
        tags, value = run.data.tags, run.data.metrics.get(T.BEST_VALUE)
        key = (tags.get(T.RESEED_OF), tags.get(T.KIND))
        if key[1] not in (RESEED, FOLD) or key[0] is None or run.info.status != "FINISHED" or value is None:
            continue
        values.setdefault(key, []).append(value)
        k = tags.get(T.FOLD_OF, "").partition("/")[2]
        if k.isdigit():
            folds[key] = int(k)
    found = [Finalist(t, kind, singles.get(t), tuple(v), folds.get((t, kind))) for (t, kind), v in values.items()]
    return sorted(found, key=lambda f: (*rank_key(f.mean, mode), f.trial_id, f.kind))


def latest_version(store, study: str) -> dict | None:
    """The study's most recently registered model version (a row of `hpsearch models`), if any."""
    rows = [r for r in tracking.registered_models(store) if r["study"] == study]
    return max(rows, key=lambda r: (r["created"] or 0, r["version"]), default=None)


def finalists_html(store, parent, study: str, frame, metric: str, mode: str) -> str:
    """The section's body: the finalists' table, then the latest registered version (and an ensemble's members);
    one line when there is neither."""
    singles = {row.trial_id: _value(row.metric) for row in frame.itertuples()}
    found = finalists(store, parent, singles, mode)
    version = latest_version(store, study)
    if not found and (version is None or version["kind"] != ENSEMBLE):
        return f"<p>{html.escape(NOTHING)}</p>"
    parts = [_finalists_table(found, metric, version, parent.info.run_id)] if found else []
    if version is not None:
        parts.append(_version_html(version))
    return "".join(parts)


def _finalists_table(found: list[Finalist], metric: str, version: dict | None, run_id: str) -> str:
    chosen = version["trial_id"] if version and version.get("run_id") == run_id else None
    head = ["configuration (trial)", f"single split {metric}", "retrained on", f"mean ± std {metric}", "n"]
    rows = [
        [
            f.trial_id + (" (registered)" if f.trial_id == chosen else ""),
            readable(f.single),
            f.evidence(),
            f"{readable(f.mean)} ± {readable(f.std)}",
            str(len(f.values)),
        ]
        for f in found
    ]
    note = "<p>Each configuration's original trial (one split, one seed) next to its retrainings' spread.</p>"
    return note + _table(head, rows)


def _version_html(version: dict) -> str:
    name = f"{version['name']} version {version['version']}"
    if version["kind"] != ENSEMBLE:
        single = f"Latest registered: {name}, a single model (trial {version['trial_id']})."
        return f"<p>{html.escape(single)}</p>"
    held = (
        f"held out: single model {readable(version.get('held_out_single'))}, "
        f"ensemble {readable(version.get('held_out_ensemble'))}"
    )
    members = version["members"]
    if not isinstance(members, list):
        return f"<p>Latest registered: {html.escape(name)}, an ensemble ({held}); its members tag is unreadable.</p>"
    head = ["member", "trial", "seed", "fold", "weight", "checkpoint"]
    rows = [
        [
            str(m.get("name", "-")),
            str(m.get("trial_id", "-")),
            readable(m.get("seed")),
            str(m.get("fold") or "-"),
            readable(m.get("weight")),
            str(m.get("checkpoint_sha256") or "-")[:12],
        ]
        for m in members
    ]
    size = version["ensemble_size"]
    intro = f"Latest registered: {name}, an ensemble of {size} members; {held}."
    return f"<p>{html.escape(intro)}</p>" + _table(head, rows)


def _value(metric) -> float | None:
    """A results row's metric: None for a trial without one (NaN in the frame)."""
    return None if metric is None or math.isnan(metric) else float(metric)


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"
