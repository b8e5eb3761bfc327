"""P4 diagnostic: which trials TPE counts as "good" during one seed of hpsearch's arm of benchmarks/p4_search.py.

Runs that arm for one seed (the same study, space and budget), reads the study's Optuna journal back, and
for the first n trials (n = 20, 40, 60, 80, all) prints TPE's good group two ways:
- as Optuna's own `_split_trials` forms it from the states in storage (a private function: this is a
  diagnostic, not a product path): how many of its trials are COMPLETE and how many PRUNED, their values,
  and the best epoch-1 values of the trials it left out;
- as the sampler hpsearch uses under ASHA sees it (search/sampling/_ranking.py): the good group's best values and
  how many of its trials are COMPLETE.

    python benchmarks/p4_tpe_groups.py 19
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import optuna
    from optuna.samplers._tpe.sampler import _split_trials
    from optuna.trial import TrialState

    from benchmarks import p4_search
    from search.sampling._ranking import rank_by_best
    from search.scheduling import _tune

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ["HPSEARCH_HOME"] = str(workdir / "home")
        _tune.connect(None)
        p4_search.run_hpsearch(seed, workdir)
        journal = next((workdir / "home").rglob("*.journal"))
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[-1], storage=storage)
        done = [t for t in study.get_trials(deepcopy=True) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]

    def first(trial) -> float:
        return trial.intermediate_values.get(1, float("nan"))

    for n in (20, 40, 60, 80, len(done)):
        trials = done[:n]
        n_below = min(math.ceil(0.1 * n), 25)  # TPE's default gamma
        good, rest = _split_trials(study, trials, n_below)
        complete = [t for t in good if t.state == TrialState.COMPLETE]
        left_out = sorted((first(t) for t in rest), reverse=True)[: len(good)]
        print(
            f"first {n} trials: good group {len(good)} = {len(complete)} COMPLETE + {len(good) - len(complete)} "
            f"PRUNED; its final values {sorted(round(t.value, 3) for t in complete)}; its epoch-1 values "
            f"{sorted((round(first(t), 3) for t in good), reverse=True)}; the best epoch-1 values left out "
            f"{[round(v, 3) for v in left_out]}",
            flush=True,
        )
        view = rank_by_best(trials, maximize=True)[:n_below]
        bests = sorted((round(max(t.intermediate_values.values(), default=math.nan), 3) for t in view), reverse=True)
        print(
            f"    the ranked view's good group: best values {bests}, of which COMPLETE "
            f"{sum(t.state == TrialState.COMPLETE for t in view)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
