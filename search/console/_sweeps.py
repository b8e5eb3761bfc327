"""The commands that run and watch sweeps: `run`, `submit`, `check`, `show`, `stop`, `logs`, `doctor`."""

from __future__ import annotations

import json

from ._records import _table
from ._voice import error


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
    from .. import api
    from ..cluster._jobs import take_login

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
    from ..scheduling import _ray_start

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
        error(
            f"no trial produced a best model (study {outcome.study}) — see why with "
            f"`hpsearch results {outcome.study} --state failed` and `hpsearch logs {outcome.study} TRIAL`"
        )
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
    from .. import api

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


def _show(args) -> int:
    import dataclasses

    from .. import api

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
    from .. import api

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
    from .. import api

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

    from .. import api

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


def _check(args) -> int:
    from ..engine._check import check, exit_code

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
    from ..cluster._doctor import doctor, exit_code

    findings = doctor(args.address, args.tracking_uri, args.storage, args.job_server, args.data_root)
    for f in findings:
        print(f"[{f.status:>4}] {f.check}: {f.line}", flush=True)
    code = exit_code(findings)
    print("doctor: " + ("something to fix (the FAIL lines)" if code else "the setup works from this machine"))
    return code
