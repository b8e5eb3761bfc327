"""`hpsearch`: run a sweep, read its results, promote its best model. A user's mistake is one line on stderr
and exit 2 (`console._voice`); the commands themselves are in `search.console`."""

from __future__ import annotations

import sys

from .console._parser import EXIT_USER_ERROR, build_parser
from .console._voice import error

__all__ = ["EXIT_USER_ERROR", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is not None or args.command != "run":
        return _command(args)
    from .console import _sweeps

    code = _command(args, _sweeps._check_study)  # a malformed study: one line in a second, with no Ray started for it
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
        return (handler or _commands()[args.command])(args)
    except UserError as exc:
        error(str(exc))
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `hpsearch results x | head` (before ConnectionError, its base class)
        sys.stderr.close()
        return 0
    except (ConnectionError, ValueError) as exc:
        if type(exc).__name__ not in ("TrackingUnreachable", "TrackingUnusable"):  # by name: no mlflow import
            raise
        error(str(exc))  # tracking's: a location to fix
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        error(str(exc) or "interrupted (Ctrl-C or SIGTERM)")
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


def _commands() -> dict:
    from .console import _records, _sweeps

    return {
        "run": _sweeps._run,
        "submit": _sweeps._submit,
        "check": _sweeps._check,
        "show": _sweeps._show,
        "stop": _sweeps._stop,
        "logs": _sweeps._logs,
        "doctor": _sweeps._doctor,
        "results": _records._results,
        "report": _records._report,
        "promote": _records._promote,
        "rollback": _records._rollback,
        "models": _records._models,
        "ui": _records._ui,
        "studies": _records._studies,
        "trainables": _records._trainables,
    }


if __name__ == "__main__":
    sys.exit(main())
