"""`hpsearch`'s commands and flags, with the help a user reads. Defaults named in a help text are the ones the
code applies (tests/test_readme.py keeps the README's command table in step with these commands)."""

from __future__ import annotations

import argparse

from studies.words import STATES

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        self.exit(EXIT_USER_ERROR, f"hpsearch: error: {message} — see `{self.prog} --help`\n")


def _number(text: str) -> float:
    """A float flag's text as a number; its range is the study spec's to check (`--hours 0` is refused there,
    naming the field's rule, as the same value in the study file would be)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


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


def _format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["table", "json"], default="table")


def _run_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `run`, which `submit` takes too."""
    p.add_argument("study", help="a built-in study name or a path to a study YAML file")
    p.add_argument("--trials", type=int, help="number of trials (overrides the spec)")
    p.add_argument("--hours", type=_number, help="wall-clock budget in hours")
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument("--gpus-per-trial", type=_number, help="GPUs per trial; fractions pack trials")
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
        help="shared storage for Ray's experiments and the study's state, a path every node mounts (default: "
        "HPSEARCH_STORAGE, the config file, else the data directory, $HPSEARCH_HOME or ./hpsearch-runs)",
    )
    _common(p)


def _sweep_commands(sub) -> None:
    p = sub.add_parser("run", help="run a study's sweep")
    _run_flags(p)

    p = sub.add_parser("submit", help="send a study's sweep to the Ray cluster as a Ray Job, and return at once")
    _run_flags(p)
    p.add_argument(
        "--job-server",
        help="the head's job server, http://HOST:PORT (default: RAY_API_SERVER_ADDRESS, "
        "else port 8265 on the Ray address's host, else http://127.0.0.1:8265)",
    )

    p = sub.add_parser("check", help="preflight: data, shapes, overfit one batch, LR range test, time estimate")
    p.add_argument("study", help="a built-in study name or a path to a study YAML file")
    p.add_argument("--data-root", help="folder holding the data set (overrides the spec)")
    _common(p)

    p = sub.add_parser("show", help="a study's progress: counts by state, best so far, budget and ETA")
    p.add_argument("study", help="a study name or its YAML file")
    _format(p)
    _reads_a_run(p)
    _storage(p)

    p = sub.add_parser("stop", help="end a running sweep cleanly, from another shell or machine")
    p.add_argument("study", help="a study name or its YAML file")
    _storage(p)

    p = sub.add_parser(
        "logs", help="a trial's output and traceback; without TRIAL, the submitted job's driver's output"
    )
    p.add_argument("study", help="a study name or its YAML file")
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


def _result_commands(sub) -> None:
    p = sub.add_parser("results", help="one row per trial, best first")
    p.add_argument("study", help="a study name or its YAML file")
    p.add_argument("--top", type=int, help="only the first K rows")
    p.add_argument("--state", help=f"only trials in this state: {', '.join(STATES)}")
    p.add_argument("--where", help='a pandas query over columns and params, e.g. "lr < 0.01 and epochs > 3"')
    p.add_argument("--sort", help="order by a column or param instead of the rank; NAME:desc for descending")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("--output", help="write to this file instead of stdout (required for parquet)")
    _reads_a_run(p)

    p = sub.add_parser("report", help="an HTML report: Optuna's plots, learning curves, diagnoses, best model")
    p.add_argument("study", help="a study name or its YAML file")
    p.add_argument("--output", help="the HTML file (default: $HPSEARCH_HOME/reports/STUDY.html)")
    _reads_a_run(p)

    p = sub.add_parser("studies", help="built-in studies and studies with records")
    _format(p)
    _common(p)

    p = sub.add_parser("trainables", help="registered trainables and their hyperparameters")
    _format(p)

    p = sub.add_parser("ui", help="the MLflow UI on the study store, on 127.0.0.1 unless --host says otherwise")
    p.add_argument("study", nargs="?", help="open this study's experiment")
    p.add_argument("--host", default="127.0.0.1", help="the interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="the port to serve on (default 5000)")
    _common(p)


def _model_commands(sub) -> None:
    p = sub.add_parser("promote", help="register the study's best model and set an alias")
    p.add_argument("study", help="a study name or its YAML file")
    p.add_argument("--alias", default="champion", help="the alias the promoted version gets (default champion)")
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
    _format(p)
    _reads_a_run(p)

    p = sub.add_parser("rollback", help="point an alias back at the version it had before the last promote")
    p.add_argument("model", help="a registered model name (see `hpsearch models`)")
    p.add_argument("--alias", default="champion", help="the alias to move back (default champion)")
    _common(p)

    p = sub.add_parser("models", help="registered models: versions, aliases, study, trial and test metrics")
    _format(p)
    _common(p)


def _team_commands(sub) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpsearch", description="Hyperparameter search: Ray Tune + Optuna + ASHA, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _sweep_commands(sub)
    _result_commands(sub)
    _model_commands(sub)
    _team_commands(sub)
    return parser
