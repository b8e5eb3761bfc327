"""`hpsearch`: run a sweep, read its results, promote its best model. User errors: one line, exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        self.exit(EXIT_USER_ERROR, f"hpsearch: error: {message} (see --help)\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: HPSEARCH_TRACKING_URI, the config file, else "
        "sqlite in $HPSEARCH_HOME or ./hpsearch-runs)",
    )


def _reads_a_run(p: argparse.ArgumentParser) -> None:
    """For commands that read one of a study's runs: --run, and the common options."""
    p.add_argument("--run", dest="run_id", help="a parent run id (default: the latest run)")
    _common(p)


def _storage(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        help="the shared storage the study's state is on, where `submit` records its job (default: "
        "HPSEARCH_STORAGE, the config file, else the data directory)",
    )


def _positive_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _run_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `run`, which `submit` takes too."""
    p.add_argument("study", help="a built-in study name or a path to a study YAML file")
    p.add_argument("--trials", type=int, help="number of trials (overrides the spec)")
    p.add_argument("--hours", type=_positive_float, help="wall-clock budget in hours")
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument("--gpus-per-trial", type=_positive_float, help="GPUs per trial; fractions pack trials")
    p.add_argument("--seed", type=int, help="sampler and trial seed")
    p.add_argument("--data-root", help="folder holding the data set (torchvision layouts; overrides the spec)")
    p.add_argument("--warm-start", metavar="OTHER_STUDY", help="first try the best configurations of another study")
    p.add_argument("--warm-count", type=int, help="how many configurations to warm-start with (default 5)")
    p.add_argument(
        "--resume", action="store_true", help="continue the study's unfinished run (after Ctrl-C, kill or crash)"
    )
    p.add_argument("--fresh", action="store_true", help="start a new run even though the last one is unfinished")
    p.add_argument(
        "--address",
        help="a Ray cluster to join, HOST:PORT of its head (default: HPSEARCH_ADDRESS, the config file, else a "
        "local Ray); for submit also the head's job server, http://HOST:8265, as `ray job submit` takes it",
    )
    p.add_argument(
        "--storage",
        help="shared storage for Ray's experiments and the study's state, a path every node "
        "mounts (default: HPSEARCH_STORAGE, the config file, else $HPSEARCH_HOME/ray)",
    )
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpsearch", description="Hyperparameter search: Ray Tune + Optuna + ASHA, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="run a study's sweep")
    _run_flags(p)

    p = sub.add_parser("submit", help="send a study's sweep to the Ray cluster as a Ray Job, and return at once")
    _run_flags(p)
    p.add_argument(
        "--job-server",
        help="the head's job server, http://HOST:PORT (default: RAY_API_SERVER_ADDRESS, "
        "else port 8265 on the Ray address's host, else http://127.0.0.1:8265)",
    )

    p = sub.add_parser("results", help="one row per trial, best first")
    p.add_argument("study")
    p.add_argument("--top", type=int, help="only the first K rows")
    p.add_argument("--state", help="only trials in this state: running, completed, pruned or failed")
    p.add_argument("--where", help='a pandas query over columns and params, e.g. "lr < 0.01 and epochs > 3"')
    p.add_argument("--sort", help="order by a column or param instead of the rank; NAME:desc for descending")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("--output", help="write to this file instead of stdout (required for parquet)")
    _reads_a_run(p)

    p = sub.add_parser("show", help="a study's progress: counts by state, best so far, budget and ETA")
    p.add_argument("study", help="a study name or its YAML file")
    p.add_argument("--format", choices=["table", "json"], default="table")
    _reads_a_run(p)
    _storage(p)

    p = sub.add_parser("stop", help="end a running sweep cleanly, from another shell or machine")
    p.add_argument("study", help="a study name or its YAML file")
    _storage(p)

    p = sub.add_parser(
        "logs", help="a trial's output and traceback; without TRIAL, the submitted job's driver's output"
    )
    p.add_argument("study")
    p.add_argument(
        "trial",
        nargs="?",
        help="a trial id, as in `hpsearch results` (default: the output of the "
        "study's job's driver, after `hpsearch submit`)",
    )
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="stream the job driver's output until the job ends (Ctrl-C stops following, not the job)",
    )
    _reads_a_run(p)
    _storage(p)

    p = sub.add_parser("promote", help="register the study's best model and set an alias")
    p.add_argument("study")
    p.add_argument("--alias", default="champion")
    p.add_argument("--name", help="registered model name (default: the study name)")
    p.add_argument(
        "--candidates", type=int, metavar="K", help="retrain the best K configurations and promote the best mean"
    )
    p.add_argument(
        "--reseeds",
        type=int,
        metavar="S",
        help="with --candidates: other training seeds per candidate, on the study's splits (default 2)",
    )
    p.add_argument(
        "--folds",
        type=int,
        metavar="F",
        help="with --candidates, in place of --reseeds: train each candidate on F cross-validation folds of the "
        "training and validation splits (each fold with its own seed); the best mean out-of-fold value wins",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        nargs="?",
        const=10,
        metavar="N",
        help="also pick an ensemble of at most N models (default 10) on held-out predictions (out-of-fold with "
        "--folds, else the validation split) and promote it where it beats the single model there",
    )
    p.add_argument(
        "--address",
        help="the Ray cluster the retrainings run on (default: HPSEARCH_ADDRESS, the config file, else a local Ray)",
    )
    p.add_argument("--format", choices=["table", "json"], default="table")
    _reads_a_run(p)

    p = sub.add_parser("check", help="preflight: data, shapes, overfit one batch, LR range test, time estimate")
    p.add_argument("study", help="a built-in study name or a path to a study YAML file")
    p.add_argument("--data-root", help="folder holding the data set (overrides the spec)")
    _common(p)

    p = sub.add_parser("report", help="an HTML report: Optuna's plots, learning curves, diagnoses, best model")
    p.add_argument("study")
    p.add_argument("--output", help="the HTML file (default: $HPSEARCH_HOME/reports/STUDY.html)")
    _reads_a_run(p)

    p = sub.add_parser("rollback", help="point @champion back at the version it had before the last promote")
    p.add_argument("model", help="a registered model name (see `hpsearch models`)")
    p.add_argument("--alias", default="champion")
    _common(p)

    p = sub.add_parser("models", help="registered models: versions, aliases, study, trial and test metrics")
    p.add_argument("--format", choices=["table", "json"], default="table")
    _common(p)

    p = sub.add_parser("ui", help="the MLflow UI on the study store, on 127.0.0.1 unless --host says otherwise")
    p.add_argument("study", nargs="?", help="open this study's experiment")
    p.add_argument("--host", default="127.0.0.1", help="the interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    _common(p)

    p = sub.add_parser("studies", help="built-in studies and studies with records")
    p.add_argument("--format", choices=["table", "json"], default="table")
    _common(p)

    p = sub.add_parser(
        "doctor",
        help="check a team's setup from this machine: the cluster and its token, each node's versions, clock, "
        "storage and data root, the tracking store (a write), the job server",
    )
    p.add_argument(
        "--address", help="the Ray cluster, HOST:PORT of its head (default: HPSEARCH_ADDRESS, the config file)"
    )
    p.add_argument("--job-server", help="the head's job server, http://HOST:PORT (as `submit` finds it otherwise)")
    p.add_argument("--data-root", help="a data root every node must read (the same path on each)")
    _storage(p)
    _common(p)

    p = sub.add_parser("trainables", help="registered trainables and their hyperparameters")
    p.add_argument("--format", choices=["table", "json"], default="table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is not None or args.command != "run":
        return _command(args)
    code = _command(args, _check_study)  # a malformed study: one line in a second, with no Ray started for it
    if code:
        return code
    # `hpsearch run` as its own process (not main([...]) called by a program or a test, whose process may hold
    # a Ray of its own and lives on): Ray starts in the background while the driver imports its libraries and
    # plans, and the process exits without tearing its modules down.
    from .cluster import _locations
    from .scheduling import _ray_start

    try:
        _locations.use_token_file()
        address = _locations.resolve(args.address, args.tracking_uri, args.storage).address
    except Exception:  # a bad config file: the run reports it in one line, with no Ray started for it
        address = "unresolved"
    _ray_start.begin(address)
    try:
        code = _command(args)
    finally:
        _ray_start.abandon()  # the run ended before its sweep connected (a user error): shut that Ray down
    _exit_now(code)
    return code  # not reached


# The commands that read a study's records take its name or its YAML file (whose `name` it is).
_READS_RECORDS = ("show", "stop", "logs", "results", "promote", "report", "ui")


def _command(args, handler=None) -> int:
    from studies import UserError

    try:
        from .cluster._locations import use_token_file

        use_token_file()  # the config's ray_token_file, for Ray and the job server alike
        if args.command in _READS_RECORDS and getattr(args, "study", None):
            from studies import study_name

            args.study = study_name(args.study)
        return (handler or _COMMANDS[args.command])(args)
    except UserError as exc:
        print(f"hpsearch: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `hpsearch results x | head` (before ConnectionError, its base class)
        sys.stderr.close()
        return 0
    except (ConnectionError, ValueError) as exc:
        if type(exc).__name__ not in ("TrackingUnreachable", "TrackingUnusable"):  # by name: no mlflow import
            raise
        print(f"hpsearch: error: {exc}", file=sys.stderr)  # tracking's: a location to fix
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        print(f"hpsearch: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 130


def _exit_now(code: int) -> None:
    """Exit as Python would, less the teardown of every module, which takes seconds once torch, Ray, MLflow
    and pandas are loaded: wait for the threads Python would wait for, run the atexit handlers (Ray's
    shutdown, logging's flush, temporary folders), flush the output, then os._exit."""
    import atexit
    import os
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _overrides(args) -> dict:
    """The flags of `run` and `submit` that override a study's fields."""
    return dict(
        trials=args.trials,
        hours=args.hours,
        max_concurrent=args.max_concurrent,
        gpus_per_trial=args.gpus_per_trial,
        seed=args.seed,
        data_root=args.data_root,
    )


def _check_study(args) -> int:
    """The study file and the flags that override it, checked before Ray, torch and MLflow load."""
    from studies import sweep_study

    sweep_study(args.study, **_overrides(args))
    return 0


def _warm(args) -> dict:
    """--warm-start and --warm-count, as `plan` takes them: a count alone would be silently ignored."""
    from studies import UserError

    if args.warm_count is not None and args.warm_start is None:
        raise UserError("--warm-count: needs --warm-start OTHER_STUDY (whose best configurations to try first)")
    return {"warm_start": args.warm_start, "warm_count": 5 if args.warm_count is None else args.warm_count}


def _run(args) -> int:
    from . import api
    from .cluster._jobs import take_login

    take_login()  # in a submitted job's driver: the submitter's tracking login, from its file

    plan = api.plan(
        args.study,
        tracking_uri=args.tracking_uri,
        address=args.address,
        storage=args.storage,
        **_warm(args),
        resume=args.resume,
        fresh=args.fresh,
        **_overrides(args),
    )
    from .scheduling import _ray_start

    if _ray_start.joined:  # `hpsearch run` found a cluster running on this machine (`ray start --head`)
        print(
            f"ray: joined the local cluster at {_ray_start.joined} (from {_ray_start.current_cluster_file()}); "
            "no Ray of its own started",
            flush=True,
        )
    outcome = api.execute(plan)
    counts = ", ".join(f"{v} {k}" for k, v in outcome.counts.items())
    print(f"\nstudy {outcome.study} finished in {outcome.seconds:.0f}s: {counts}")
    if outcome.best_trial is None:
        print("no trial produced a best model", file=sys.stderr)
        return 1
    frame = api.results(outcome.study, top=10, tracking_uri=args.tracking_uri, run_id=outcome.run_id)
    print(_table(frame))
    from studies import headline

    test = headline(outcome.test_metrics) or "no test evaluation"
    print(f"\nbest: trial {outcome.best_trial} {outcome.metric}={outcome.best_value:.4f}; {test}")
    if outcome.model_uri:
        print(f"model: {outcome.model_uri}  (promote with: hpsearch promote {outcome.study})")
    return outcome.exit_code


def _submit(args) -> int:
    from . import api

    address, job_server = args.address, args.job_server
    if address and address.startswith(("http://", "https://")):  # `ray job submit --address`'s convention
        if job_server:
            from studies import UserError

            raise UserError(f"--address {address} names the job server, and so does --job-server: give one")
        address, job_server = None, address
    info = api.submit(
        args.study,
        tracking_uri=args.tracking_uri,
        address=address,
        storage=args.storage,
        job_server=job_server,
        **_warm(args),
        resume=args.resume,
        fresh=args.fresh,
        **_overrides(args),
    )
    study = info["study"]
    print(f"submitted study {study} as Ray job {info['job_id']} to {info['job_server']}")
    print(f"  follow it:  hpsearch show {study}    (its state and progress)")
    print(f"              hpsearch logs {study}    (the driver's output; `hpsearch logs {study} TRIAL` for a trial's)")
    print(f"  end it:     hpsearch stop {study}    (cleanly: the study still gets its best model and results)")
    return 0


def _results(args) -> int:
    from studies import UserError, flat_results

    from . import api

    if args.format == "parquet" and not args.output:
        raise UserError("--format parquet: give --output FILE (parquet is binary)")
    if args.top is not None and args.top < 1:
        raise UserError(f"--top: must be >= 1 (got {args.top})")
    _check_output(args.output)
    frame = api.results(
        args.study,
        top=args.top,
        tracking_uri=args.tracking_uri,
        run_id=args.run_id,
        state=args.state,
        where=args.where,
        sort=args.sort,
    )
    if args.output:
        Path(args.output).expanduser().parent.mkdir(parents=True, exist_ok=True)  # as `report` does
    if args.format == "parquet":
        flat_results(frame).to_parquet(args.output, index=False)
        print(f"wrote {len(frame)} rows to {args.output}")
        return 0
    if args.format == "json":
        text = json.dumps(_records(frame), indent=2) + "\n"
    elif args.format == "csv":
        text = flat_results(frame).to_csv(index=False)
    else:
        text = _table(frame) + "\n"
    if args.output:
        with open(Path(args.output).expanduser(), "w") as f:
            f.write(text)
        print(f"wrote {len(frame)} rows to {args.output}")
    else:
        print(text, end="")
    return 0


def _check_output(output: str | None) -> None:
    """An --output file is refused before anything is read: a folder, or a path under a file."""
    from studies import UserError

    if output is None:
        return
    path = Path(output).expanduser()
    if path.is_dir():
        raise UserError(f"--output: {output} is a folder; give a file name")
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"--output: {output}: {probe} is not a folder")


def _show(args) -> int:
    import dataclasses

    from . import api

    summary, status = api.show(args.study, tracking_uri=args.tracking_uri, run_id=args.run_id, storage=args.storage)
    if args.format == "json":
        fields = {} if summary is None else {**dataclasses.asdict(summary), "eta_s": summary.eta_s()}
        print(json.dumps({**status, **fields}, indent=2, default=str))
        return 0
    job = status.get("job")
    if job is not None:
        print(
            f"job {job['job_id']} (submitted {job['submitted']} to {job['job_server']}): {job['state']}"
            + (f": {job['message']}" if job["message"] and job["state"] in ("FAILED", "unknown") else "")
        )
        for line in job["error_lines"]:
            print(f"  | {line}")
        if job["state"] == "FAILED":
            print(f"  continue it with `hpsearch submit {args.study} --resume` (the same study file and flags)")
    if summary is None:
        print(f"study {args.study}: no run recorded yet (the job's driver records one when it starts)")
        return 0
    run = f"run {status['run_id']} ({status['run_name']})"
    print(f"study {summary.study}: {run}, {status['status']}, started {status['started']}")
    print(f"trials: {summary.counts_text()}")
    print(summary.best_text())
    print(summary.budget_text())
    if status.get("asha"):
        print(status["asha"])
    if status.get("resume"):
        print(status["resume"])
    if summary.disk_bytes is not None:
        print(f"disk: {summary.disk_bytes / 2**20:.1f} MB of checkpoints, logs and artifacts")
    return 0


def _stop(args) -> int:
    from . import api

    path = api.stop(args.study, storage=args.storage)
    if path.startswith("Ray job"):  # submitted, and its driver had not started the sweep yet
        print(
            f"asked study {args.study} to stop: {path}; a run it started is left for `hpsearch submit "
            f"{args.study} --resume`"
        )
        return 0
    print(f"asked study {args.study} to stop ({path}); running trials end as `stopped` and the study is finalised")
    return 0


def _logs(args) -> int:
    from . import api

    if args.follow:
        return _follow(args)
    logs = api.logs(args.study, args.trial, tracking_uri=args.tracking_uri, run_id=args.run_id, storage=args.storage)
    for name, text in logs:
        print(f"==> {name} <==")
        print(text.rstrip() or "(empty)")
    return 0


def _follow(args) -> int:
    """`logs STUDY --follow`: the job driver's output as it comes, until the job ends; Ctrl-C ends only this."""
    from studies import UserError

    from . import api

    if args.trial is not None:
        raise UserError("--follow: follows the submitted job's driver; a trial's output is read without it")
    record, chunks = api.follow(args.study, storage=args.storage)
    print(f"==> Ray job {record['job_id']} on {record['job_server']} (Ctrl-C stops following, not the job) <==")
    try:
        for chunk in chunks:
            print(chunk, end="", flush=True)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {record['job_id']} goes on (`hpsearch stop {args.study}` ends it)")
        return 0
    state = api.job_state(args.study, storage=args.storage)
    print(f"==> job {record['job_id']} ended: {state['state'] if state else 'unknown'} <==")
    return 0


def _promote(args) -> int:
    from . import api

    info = api.promote(
        args.study,
        alias=args.alias,
        name=args.name,
        tracking_uri=args.tracking_uri,
        run_id=args.run_id,
        candidates=args.candidates,
        reseeds=args.reseeds,
        address=args.address,
        folds=args.folds,
        ensemble=args.ensemble,
        out=sys.stdout if args.format == "table" else sys.stderr,
    )
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    over = "folds" if "folds" in info else "seeds"
    for c in info.get("candidates", []):
        single = " (the single best)" if c["trial_id"] == info["single_best"] else ""
        print(
            f"{'*' if c['chosen'] else ' '} trial {c['trial_id']}{single}: mean {c['mean']:.4f} +- {c['std']:.4f} "
            f"over {len(c['values'])} {over} (single split {c['single_split']:.4f})"
        )
    if info["kind"] == "ensemble":
        cost = info["cost"]
        times = cost["predict_ms"] / max(1e-9, cost["single_predict_ms"])
        print(
            f"ensemble: {cost['distinct']} models, {cost['parameters']:,} parameters "
            f"({cost['parameters'] / max(1, cost['single_parameters']):.1f}x the single model's), predict "
            f"{cost['predict_ms']:.1f} ms per {cost['rows']} rows ({times:.1f}x)"
        )
    print(
        f"promoted {info['name']} version {info['version']} as @{info['alias']} "
        f"({'an ensemble' if info['kind'] == 'ensemble' else 'trial ' + info['trial_id']}; "
        f"{_headline(info['test_metrics'])})"
    )
    if info.get("compute_s"):
        print(f"retraining took {info['compute_s']:.0f} s of training")
    if info.get("previous_version"):
        print(f"version {info['previous_version']} keeps an alias: undo with `hpsearch rollback {info['name']}`")
    print(f"load it with: mlflow.pyfunc.load_model('{info['model_uri']}')")
    return 0


def _headline(tests: dict) -> str:
    """The test metrics a person reads on one line: the per-class ones are in --format json."""
    shown = {k: v for k, v in sorted(tests.items()) if "_class_" not in k}
    return ", ".join(f"{k}={v:.4f}" for k, v in shown.items()) or "no test metrics"


def _check(args) -> int:
    from .engine._check import check, exit_code

    checks, config = check(args.study, tracking_uri=args.tracking_uri, data_root=args.data_root)
    print(f"checking {args.study} with " + " ".join(f"{k}={v}" for k, v in sorted(config.items())))
    for c in checks:
        print(f"[{c.status:>4}] {c.name}")
        for line in c.lines:
            print(f"       {line}")
    code = exit_code(checks)
    print("preflight failed" if code else "preflight passed")
    return code


def _doctor(args) -> int:
    from .cluster._doctor import doctor, exit_code

    findings = doctor(args.address, args.tracking_uri, args.storage, args.job_server, args.data_root)
    for f in findings:
        print(f"[{f.status:>4}] {f.check}: {f.line}", flush=True)
    code = exit_code(findings)
    print("doctor: " + ("something to fix (the FAIL lines)" if code else "the setup works from this machine"))
    return code


def _report(args) -> int:
    from . import api

    _check_output(args.output)
    path, diagnoses = api.report(args.study, output=args.output, tracking_uri=args.tracking_uri, run_id=args.run_id)
    for line in diagnoses:
        print(line)
    print(f"report: {path} (also logged to the study's MLflow run)")
    return 0


def _rollback(args) -> int:
    from tracking import previous_alias

    from . import api

    info = api.rollback(args.model, alias=args.alias, tracking_uri=args.tracking_uri)
    restored = _ensemble_note(info["kind"], info["ensemble_size"])
    demoted = _ensemble_note(info["previous_kind"], info["previous_ensemble_size"])
    print(
        f"{info['name']}@{info['alias']} is version {info['version']} again{restored} (version "
        f"{info['previous_version']}{demoted + ',' if demoted else ''} is now @{previous_alias(info['alias'])})"
    )
    return 0


def _ensemble_note(kind: str, size: int | None) -> str:
    """`, an ensemble of N members` for an ensemble version, nothing for a single model."""
    return "" if kind != "ensemble" else f", an ensemble of {size if size is not None else 'unknown'} members"


def _models(args) -> int:
    from . import api

    frame = api.models(args.tracking_uri)
    if args.format == "json":
        rows = _records(frame)
        for row in rows:  # a column holding None besides sizes comes back as floats from pandas
            row["ensemble_size"] = None if row["ensemble_size"] is None else int(row["ensemble_size"])
        print(json.dumps(rows, indent=2, default=str))
    elif frame.empty:
        print("(no registered models)")
    else:
        print(_models_table(frame))
    return 0


def _models_table(frame) -> str:
    """One line per version: an ensemble's member count (its members are in --format json), metrics at 4
    decimals. The held-out values and the creation time stay in the JSON."""
    import pandas as pd

    shown = frame.assign(
        aliases=frame["aliases"].apply(lambda a: ",".join(a) or "-"),
        members=frame["ensemble_size"].apply(lambda n: "-" if pd.isna(n) else str(int(n))),
        val_value=pd.to_numeric(frame["val_value"], errors="coerce"),  # a tag (a string) holds the full float
    )
    columns = ["name", "version", "aliases", "kind", "members", "study", "trial_id", "val_value"]
    columns += sorted(c for c in frame.columns if c.startswith("test_"))
    return shown[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")


def _ui(args) -> int:
    import os
    import signal
    import subprocess

    from . import api

    command, url = api.ui_command(args.study, tracking_uri=args.tracking_uri, host=args.host, port=args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {args.host}: anyone who can reach it can read and change this store", file=sys.stderr
        )
    print(f"MLflow UI at {url} (Ctrl-C to stop)", flush=True)
    # `mlflow ui` runs its server as a child process: give both a process group of their own, and end the
    # group on Ctrl-C or SIGTERM, so no server is left behind.
    server = subprocess.Popen(command, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def _studies(args) -> int:
    from . import api

    frame = api.list_studies(args.tracking_uri)
    print(json.dumps(frame.to_dict("records"), indent=2) if args.format == "json" else frame.to_string(index=False))
    return 0


def _trainables(args) -> int:
    from . import api

    rows = api.trainables_table()
    if args.format == "json":
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for row in rows:
        print(f"{row['name']}: {row['description']} (metric {row['metric']}, {row['mode']})")
        for name, what in row["hyperparameters"].items():
            print(f"  {name:<15} {what} [default {row['defaults'].get(name)!r}]")
    return 0


def _records(frame) -> list[dict]:
    rows = frame.to_dict("records")
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float) and v != v:  # NaN -> null in JSON
                row[k] = None
    return rows


def _table(frame) -> str:
    from studies import short_value

    if frame.empty:
        return "(no trials)"
    metric = frame.attrs.get("metric") or "metric"
    columns = ["rank", "trial_id", "state", "metric", "epochs"]
    if frame.attrs.get("budget") == "seconds":  # what ASHA's rungs counted: each trial's seconds of training
        columns.append("train_seconds")
    shown = frame[columns].rename(columns={"metric": metric})
    shown = shown.assign(epochs=shown["epochs"].astype("Int64"))  # running trials have none yet: not 8.0000
    # Only what varies between trials: fixed params (epochs, split_seed, ...) would drown the searched ones.
    constant = {
        k for k in frame["params"].iloc[0] if all(p.get(k) == frame["params"].iloc[0][k] for p in frame["params"])
    }
    if len(frame) == 1:
        constant = set()
    params = frame["params"].apply(
        lambda p: " ".join(f"{k}={short_value(v)}" for k, v in sorted(p.items()) if k not in constant)
    )
    return shown.assign(params=params).to_string(index=False, float_format=lambda v: f"{v:.4f}")


_COMMANDS = {
    "run": _run,
    "submit": _submit,
    "results": _results,
    "show": _show,
    "stop": _stop,
    "logs": _logs,
    "promote": _promote,
    "check": _check,
    "report": _report,
    "rollback": _rollback,
    "models": _models,
    "ui": _ui,
    "studies": _studies,
    "trainables": _trainables,
    "doctor": _doctor,
}

if __name__ == "__main__":
    sys.exit(main())
