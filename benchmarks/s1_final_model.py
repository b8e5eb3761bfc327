"""S1: the promoted model against the hand-wired stack (issue 21, part 4).

Per task and seed, the arms (benchmarks/_s1_tasks.py has the tasks, each the same study for every arm):

  a       Ray Tune + OptunaSearch + ASHA + MLflowLoggerCallback wired by hand; its single best tested once
  b       `hpsearch run`: the sweep's best, tested once
  c       `promote --candidates 3 --reseeds 2` of b's sweep
  d       `promote --candidates 3 --folds 5` of b's sweep
  e       `promote --candidates 3 --reseeds 2 --ensemble 5` of b's sweep: what it registers (single or ensemble)
  budget  `hpsearch run` with ASHA's rungs in training seconds (`asha: {budget: seconds}`), max_t = what b's
          trials took for max_t epochs on average

One JSONL line per task, seed and arm is appended as the arm finishes; a rerun skips what the file holds.
An arm whose promote or study feature is not in this checkout is skipped with a line saying so (rerun once
it is). Every sweep's state is in a folder of its own per task and seed (`--work`, in memory by default),
removed when all six arms of it are recorded. Run from the repository root:

    python benchmarks/s1_final_model.py                        # every task, seeds 0-7, every arm
    python benchmarks/s1_final_model.py --tasks digits-mlp --seeds 0 --arms a,b,c
    python benchmarks/s1_final_model.py --summary              # the tables, from the JSONL
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._s1_summary import ARMS, summary  # noqa: E402
from benchmarks._s1_tasks import ASHA, TASKS, Task  # noqa: E402

PROMOTE_ARGS = {
    "c": {"candidates": 3, "reseeds": 2},
    "d": {"candidates": 3, "folds": 5},
    "e": {"candidates": 3, "reseeds": 2, "ensemble": 5},  # c's retrainings, reused when c ran first
    "f": {"ensemble": 8},  # the sweep's own kept checkpoints (keep_checkpoints: 8), nothing retrained
}
NEEDS_SWEEP = ("c", "d", "e", "f", "budget")  # arms that read arm b's sweep


class Seed:
    """One task and seed: its folder, its hpsearch home and store, and the arms already recorded."""

    def __init__(self, task: Task, seed: int, work: Path, done: dict[str, dict]):
        self.task, self.seed, self.done = task, seed, done
        self.workdir = work / f"{task.name}-s{seed}"
        self.home = self.workdir / "home"
        # The embedded store of HPSEARCH_HOME (set per seed by run_seed): an explicit sqlite URI would leave the
        # artifacts in MLflow's default, ./mlruns of the current folder (the repository).
        self.uri = None
        self.log = self.workdir / "hpsearch.log"  # hpsearch's own output, for a look when an arm fails
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.study = task.study(seed, self.workdir)

    def sweep(self, study: dict) -> dict:
        """Run `study` through hpsearch; its best's test value and the training seconds of its trials."""
        from search import api

        path = self.workdir / f"{study['name']}.yaml"
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        out = io.StringIO()
        try:
            outcome = api.run(str(path), tracking_uri=self.uri, out=out)
        finally:
            self._keep(out)
        if self.task.test_key not in outcome.test_metrics:
            raise RuntimeError(f"{study['name']}: no {self.task.test_key} (finishing left {outcome.finishing_left})")
        seconds, epochs, trials = trial_seconds(self.uri, study["name"], outcome.run_id)
        return {
            "test": outcome.test_metrics[self.task.test_key],
            "val": outcome.best_value,
            "sweep_s": seconds,
            "trials": trials,
            "epochs": epochs,
            "epoch_s": seconds / max(1, epochs),
        }

    def _keep(self, out: io.StringIO) -> None:
        with open(self.log, "a") as log:
            log.write(out.getvalue())


def trial_seconds(uri: str | None, study: str, run_id: str) -> tuple[float, int, int]:
    """(training seconds, epochs, trials) over a sweep's trials: each trial's MLflow child run holds Ray's
    time_total_s at its last epoch and its epoch count."""
    import studies
    import tracking

    store, parent = studies.study_run(study, uri, run_id)
    runs = tracking.child_runs(store, parent.info.experiment_id, parent.info.run_id)
    runs = [r for r in runs if r.data.tags.get(tracking.tags.KIND, "trial") == "trial"]
    seconds = sum(r.data.metrics.get("time_total_s", 0.0) for r in runs)
    epochs = sum(int(r.data.tags.get(tracking.tags.EPOCHS, 0)) for r in runs)
    return seconds, epochs, len(runs)


def promotion_epochs(uri: str | None, study: str, since: float) -> int:
    """Epochs trained by a promotion that began at `since` (time.time()): the child runs it recorded (its
    retrainings), each an epoch per value of the study's metric. Retrainings it reused are older."""
    import studies
    import tracking
    from search.review._reseed import FOLD, RESEED

    store, parent = studies.study_run(study, uri)
    metric = parent.data.tags.get(tracking.tags.METRIC, "")
    runs = tracking.child_runs(store, parent.info.experiment_id, parent.info.run_id)
    kinds = (RESEED, FOLD)
    new = [r for r in runs if r.data.tags.get(tracking.tags.KIND) in kinds and r.info.start_time >= since * 1000]
    return sum(len(store.client.get_metric_history(r.info.run_id, metric)) for r in new)


def arm_stock(s: Seed) -> dict:
    from benchmarks._s1_stock import run_stock

    metric = "val_mse" if s.task.mode == "min" else "val_accuracy"
    return run_stock(s.study, metric, s.task.mode, s.task.test_key, s.workdir)


def arm_promote(s: Seed, arm: str) -> dict:
    from search import api

    out, since = io.StringIO(), time.time()
    try:
        result = api.promote(
            s.study["name"], name=f"{s.study['name']}-{arm}", tracking_uri=s.uri, out=out, **PROMOTE_ARGS[arm]
        )
    finally:
        s._keep(out)
    compute = result.get("compute_s")
    if compute is None:  # a promote without compute_s: the seconds it prints per retraining (whole seconds)
        compute = float(sum(int(x) for x in re.findall(r"\((\d+)s\)$", out.getvalue(), re.M)))
    record = {
        "test": result["test_metrics"][s.task.test_key],
        "compute_s": compute,
        "compute_epochs": promotion_epochs(s.uri, s.study["name"], since),
        "sweep_s": s.done["b"]["sweep_s"],
        "sweep_epochs": s.done["b"]["epochs"],
        "kind": result.get("kind", "single"),
        "held_out": result.get("held_out"),
        "version": result.get("version"),
    }
    if arm == "e" and "c" in s.done:  # its retrainings are c's, reused at no cost: they count here too
        record["compute_s"] += s.done["c"]["compute_s"]
        record["compute_epochs"] += s.done["c"]["compute_epochs"]
        record["reused"] = "c"
    return record


def budget_study(s: Seed) -> dict:
    """b's study with ASHA's rungs in training seconds: max_t and grace_period are b's epochs at the seconds an
    epoch took in b's sweep, so both arms grant about the same training time."""
    per_epoch = s.done["b"]["epoch_s"]
    return {
        **s.study,
        "name": f"{s.study['name']}-budget",
        "asha": {
            "budget": "seconds",
            "max_t": round(ASHA["max_t"] * per_epoch, 2),
            "grace_period": round(ASHA["grace_period"] * per_epoch, 2),
            "reduction_factor": ASHA["reduction_factor"],
            "max_epochs": ASHA["max_t"],
        },
    }


def arm_budget(s: Seed) -> dict:
    return s.sweep(budget_study(s))


def missing_feature(arm: str) -> str | None:
    """Why this checkout cannot run `arm` (a promote argument or a study field not merged yet), or None."""
    from search import api

    if arm in PROMOTE_ARGS:
        known = inspect.signature(api.promote).parameters
        absent = [k for k in PROMOTE_ARGS[arm] if k not in known]
        return f"api.promote has no {', '.join(absent)}" if absent else None
    if arm == "budget":
        from studies import parse_spec

        try:
            budget = {"budget": "seconds", "max_t": 9.5, "grace_period": 1.5, "max_epochs": 9}
            parse_spec({"name": "probe", "trainable": "digits-mlp", "asha": budget}, "s1")
        except Exception as exc:
            return f"the study has no asha budget ({str(exc).splitlines()[0]})"
    return None


def run_arm(s: Seed, arm: str) -> dict:
    if arm == "a":
        return arm_stock(s)
    if arm == "b":
        return s.sweep(s.study)
    if arm == "budget":
        return arm_budget(s)
    return arm_promote(s, arm)


def read_records(path: Path) -> dict[tuple[str, int, str], dict]:
    records = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                records[(r["task"], r["seed"], r["arm"])] = r
    return records


def run_seed(s: Seed, arms: list[str], out: Path) -> None:
    os.environ["HPSEARCH_HOME"] = str(s.home)
    for arm in arms:
        if arm in s.done:
            continue
        why = missing_feature(arm) or (
            "needs arm b's sweep (run b first)" if arm in NEEDS_SWEEP and "b" not in s.done else None
        )
        if why:
            print(f"{s.task.name} seed {s.seed} arm {arm}: skipped: {why}", flush=True)
            continue
        started = time.monotonic()
        try:
            record = run_arm(s, arm)
        except Exception:
            print(f"{s.task.name} seed {s.seed} arm {arm}: FAILED (see {s.log})", flush=True)
            traceback.print_exc()
            continue
        record = {
            "task": s.task.name,
            "seed": s.seed,
            "arm": arm,
            "metric": s.task.test_key,
            **record,
            "wall_s": round(time.monotonic() - started, 1),
            "at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        s.done[arm] = record
        extra = f", promotion {record['compute_s']:.0f} s" if "compute_s" in record else ""
        print(
            f"{s.task.name} seed {s.seed} arm {arm}: {s.task.test_key} {record['test']:.4f} "
            f"(training {record.get('sweep_s', 0):.0f} s{extra}; wall {record['wall_s']:.0f} s)",
            flush=True,
        )


def seeds_arg(text: str) -> list[int]:
    """'0-7' or '0,2,5' (or both: '0-3,6')."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += range(int(low), int(high or low) + 1)
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--seeds", type=seeds_arg, default=list(range(8)), help="e.g. 0-7 (default) or 0,3")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "s1_final_model.jsonl")
    parser.add_argument(
        "--work", type=Path, help="the sweeps' folders (default: one under /dev/shm, else the temp dir)"
    )
    parser.add_argument("--summary", action="store_true", help="print the tables from --out and exit")
    args = parser.parse_args()
    tasks, arms = args.tasks.split(","), args.arms.split(",")
    for name, known in (("--tasks", TASKS), ("--arms", ARMS)):
        unknown = [x for x in (tasks if name == "--tasks" else arms) if x not in known]
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    if args.summary:
        print(summary(list(read_records(args.out).values()), TASKS))
        return
    digest = hashlib.sha1(str(args.out.resolve()).encode()).hexdigest()[:8]
    # In memory where the machine has it: Ray's MLflowLoggerCallback writes each metric of each epoch in a
    # transaction of its own, which on this VM's disk took 0.5 s per result and doubled arm (a)'s wall time.
    # S1 compares models, not logging speed; both stacks' stores are in the same place.
    shm = Path("/dev/shm")
    work = args.work or (shm if shm.is_dir() else Path(tempfile.gettempdir())) / f"s1_final_model-{digest}"
    os.chdir(ROOT)  # Ray's workers import benchmarks.* (the stock trial, the diabetes trainable) from here
    for name in ("HPSEARCH_ADDRESS", "HPSEARCH_TRACKING_URI", "HPSEARCH_STORAGE"):
        os.environ.pop(name, None)  # a local Ray and each seed's own store, whatever this shell has set
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text("")  # nor a config file of the user's
    os.environ["HPSEARCH_CONFIG"] = str(work / "config.yaml")
    from search.scheduling import _tune

    _tune.connect(None)  # one local Ray for every sweep and promotion of this process
    records = read_records(args.out)
    for seed in args.seeds:  # seed by seed: a run cut short leaves every task with the same seeds
        for name in tasks:
            done = {arm: r for (t, sd, arm), r in records.items() if t == name and sd == seed}
            if all(arm in done for arm in arms):
                continue
            s = Seed(TASKS[name], seed, work, done)
            run_seed(s, arms, args.out)
            if all(arm in s.done for arm in ARMS):
                shutil.rmtree(s.workdir, ignore_errors=True)
    print(summary(list(read_records(args.out).values()), TASKS))


if __name__ == "__main__":
    main()
