"""The commands that read a study's records and its models: `results`, `report`, `promote`, `rollback`,
`models`, `studies`, `trainables`, `ui`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._voice import warning


def _results(args) -> int:
    from studies import UserError, flat_results

    from .. import api

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


def _promote(args) -> int:
    from .. import api

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


def _report(args) -> int:
    from .. import api

    _check_output(args.output)
    path, diagnoses = api.report(args.study, output=args.output, tracking_uri=args.tracking_uri, run_id=args.run_id)
    for line in diagnoses:
        print(line)
    print(f"report: {path} (also logged to the study's MLflow run)")
    return 0


def _rollback(args) -> int:
    from tracking import previous_alias

    from .. import api

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
    from .. import api

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

    from .. import api

    command, url = api.ui_command(args.study, tracking_uri=args.tracking_uri, host=args.host, port=args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        warning(f"serving on {args.host}: anyone who can reach it can read and change this store")
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
    from .. import api

    frame = api.list_studies(args.tracking_uri)
    print(json.dumps(frame.to_dict("records"), indent=2) if args.format == "json" else frame.to_string(index=False))
    return 0


def _trainables(args) -> int:
    from .. import api

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
