"""`hpsearch doctor`: a team's setup checked end to end from the machine it runs on, one finding per check,
each `ok` or what is wrong and how to fix it. Nothing it prints holds a secret: tracking URIs are redacted,
the Ray token and the tracking login are never shown, only where they were taken from.

It reuses what a sweep checks before it starts (`_locations` resolves the places, `_ray_start` refuses a dead
address, `_cluster` asks each node by a task pinned to it, `_jobs` finds and opens the job server), and adds
what only a team's setup can get wrong: another version of hpsearch or its libraries on a node, a clock that
drifted (the study lock's heartbeat compares them), a head whose `ray start` cannot find `hpsearch`."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path

from studies import UserError

from ..scheduling import _ray_start
from . import _jobs, _locations
from . import _ship as _cluster

OK, WARN, FAIL = "ok", "warn", "FAIL"
# How far a node's clock may be from this machine's. A stale lock is taken over after 60 s of heartbeat
# silence and racing machines compare modification times: NTP keeps machines within milliseconds, and a
# few seconds of drift already shortens that grace noticeably.
CLOCK_S = 2.0
HEAD = "node:__internal_head__"  # the resource Ray gives the head node only


@dataclasses.dataclass(frozen=True)
class Finding:
    status: str  # ok, warn or FAIL
    check: str  # ray, versions, clock, storage, data root, tracking, job server
    line: str


def doctor(address=None, tracking_uri=None, storage=None, job_server=None, data_root=None) -> list[Finding]:
    """Every check, in the order a team sets the parts up. Raises UserError only for a config file that
    cannot be read; everything else is a finding."""
    import tracking

    _locations.use_token_file()
    where = _locations.resolve(address, tracking_uri, storage)
    findings = _cluster_findings(where, tracking.data_home(), data_root)
    findings.append(_tracking(where.tracking_uri))
    findings.append(_job_server(job_server, where))
    return findings


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.status == FAIL for f in findings) else 0


def node_facts(paths: dict[str, str]) -> dict:
    """On one node: its host and address, which of `paths` it reads, its versions, whether `hpsearch` is on
    the PATH its `ray start` ran with (a submitted job's driver runs it from there), and its clock."""
    import shutil

    facts = _cluster._probe(paths)
    facts.update(versions=_cluster.versions(), hpsearch=shutil.which("hpsearch"), time=time.time())
    return facts


def _token_origin() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"the file {os.environ['RAY_AUTH_TOKEN_PATH']}"
    return "~/.ray/auth_token" if Path("~/.ray/auth_token").expanduser().is_file() else "none"


def _connect(address: str, origin: str) -> Finding | None:
    """None once this process has joined the cluster; a finding saying why not otherwise."""
    import logging

    import ray

    try:
        _ray_start.check_reachable(address, origin)
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except UserError as exc:
        return Finding(FAIL, "ray", str(exc))
    except Exception as exc:
        return Finding(FAIL, "ray", str(_ray_start.connect_error(address, exc)).splitlines()[0])
    return None


def _cluster_findings(where, home: Path, data_root: str | None) -> list[Finding]:
    try:
        root = where.state_root(home)
        with _cluster.storage_marker(root) as marker:
            paths = {"storage": str(marker), **({"data root": str(Path(data_root).resolve())} if data_root else {})}
            if where.address is None and not os.environ.get("RAY_ADDRESS"):
                return [
                    Finding(OK, "ray", "no cluster configured: each run starts a Ray of its own on this machine"),
                    Finding(OK, "storage", f"{root} is writable from this machine"),
                ]
            return _nodes(where, paths, root)
    except (OSError, UserError) as exc:
        return [Finding(FAIL, "storage", f"cannot write the study state's folder from this machine: {exc}")]


def _nodes(where, paths: dict[str, str], root: Path) -> list[Finding]:
    import ray

    address = where.address or os.environ["RAY_ADDRESS"]
    refused = _connect(address, where.origin("address") if where.address else "RAY_ADDRESS")
    if refused is not None:
        return [refused]
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        before = time.time()
        answers = _cluster.ask_every_node(nodes, node_facts, paths)
        after = time.time()
    finally:
        ray.shutdown()
    auth = "token from " + _token_origin() if os.environ.get("RAY_AUTH_MODE") == "token" else "no token asked"
    findings = [Finding(OK, "ray", f"the cluster at {address} answers ({auth}): {len(nodes)} node(s) alive")]
    mine = _cluster.versions()
    problems: dict[str, list[str]] = {"versions": [], "clock": [], "storage": [], "data root": [], "hpsearch": []}
    for node in nodes:
        answer = answers.get(node["NodeID"])
        name = f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]})"
        if answer is None or isinstance(answer, Exception):
            why = "did not answer" if answer is None else next(iter(str(answer).splitlines()), "")[:200]
            problems["versions"].append(f"{name} could not run hpsearch's check ({why}): install hpsearch there")
            continue
        name = f"node {answer['ip']} ({node['NodeID'][:8]}, host {answer['host']})"
        for check, line in _node_problems(name, answer, mine, HEAD in node["Resources"], before, after, root):
            problems[check].append(line)
    for check, lines in problems.items():
        if check == "data root" and "data root" not in paths:
            continue
        findings += [Finding(FAIL, check, line) for line in lines] or [Finding(OK, check, _agreed(check, mine))]
    return findings


def _node_problems(name, answer, mine, head, before, after, root) -> list[tuple[str, str]]:
    found = []
    differ = {k: v for k, v in answer["versions"].items() if mine.get(k) != v}
    if differ:
        theirs = ", ".join(f"{k} {v} (here {mine.get(k)})" for k, v in differ.items())
        found.append(("versions", f"{name} has {theirs}: install the same versions on every machine"))
    if not before - CLOCK_S <= answer["time"] <= after + CLOCK_S:
        off = answer["time"] - (after if answer["time"] > after else before)
        found.append(("clock", f"{name}'s clock is {abs(off):.1f} s {'ahead' if off > 0 else 'behind'}: run NTP"))
    if not answer["seen"]["storage"]:
        found.append(("storage", f"{root} is not visible from {name}: mount the storage there at the same path"))
    if not answer["seen"].get("data root", True):
        found.append(("data root", f"cannot be read on {name}: put the data set at the same path on every node"))
    if head and not answer["hpsearch"]:
        found.append(
            (
                "hpsearch",
                f"the head, {name}, has no `hpsearch` on the PATH its `ray start` ran with, so a submitted "
                "job would fail: start the head with the environment's bin on PATH (activate the venv)",
            )
        )
    return found


def _agreed(check: str, mine: dict) -> str:
    return {
        "versions": "every node has " + ", ".join(f"{k} {v}" for k, v in mine.items()) + " like this machine",
        "clock": f"every node's clock is within {CLOCK_S:g} s of this machine's",
        "storage": "writable from this machine and visible from every node",
        "data root": "readable on every node",
        "hpsearch": "the head's `ray start` finds `hpsearch` (submitted jobs run it)",
    }[check]


def _tracking(uri: str | None) -> Finding:
    """The store answers, accepts the login, and takes a write: a throwaway experiment, deleted after."""
    import tracking

    store = tracking.Store(uri)
    shown = tracking.redacted(store.tracking_uri)
    try:
        store.check()
        if store.embedded:
            return Finding(OK, "tracking", f"{shown}: the one-machine default, writable here")
        client = store.client
        name = f"hpsearch-doctor-{uuid.uuid4().hex[:12]}"
        client.delete_experiment(client.create_experiment(name))
    except (tracking.TrackingUnreachable, tracking.TrackingUnusable) as exc:
        return Finding(FAIL, "tracking", str(exc))
    except Exception as exc:
        first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)[:300]
        return Finding(FAIL, "tracking", f"tracking store {shown} answers but refused a write: {first}")
    return Finding(OK, "tracking", f"{shown} answers and took a write (a throwaway experiment, deleted)")


def _job_server(flag: str | None, where) -> Finding:
    url, origin = _jobs.job_server(flag, where.address, where.origin("address"))
    try:
        _jobs.connect(url, origin)
    except UserError as exc:
        named = bool(flag or os.environ.get(_jobs.SERVER_ENV))
        line = str(exc).removeprefix("job server: ") + ("" if named else " (only submit needs it)")
        return Finding(FAIL if named else WARN, "job server", line)
    return Finding(OK, "job server", f"{url} ({origin}) answers")
