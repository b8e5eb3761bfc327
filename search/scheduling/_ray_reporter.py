"""The Reporter adapted to Ray Tune: metrics go to tune.report, checkpoints to a directory Ray keeps."""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch
from ray import tune

from studies.words import NODE_KEY, TRAIN_SECONDS
from trainables import Reporter, get_trainable

from ..cluster._locations import trial_log

CHECKPOINT_FILE = "checkpoint.pt"
CLOCK_FILE = "hpsearch-clock.json"  # beside the trainable's checkpoint: its TRAIN_SECONDS, restored with it


class TrainClock:
    """Seconds of a trial's own training (TRAIN_SECONDS): from the start of its function, less the time spent
    handing results to Ray (a report waits there until the driver asks for the next result, which depends on
    the driver's load, not on the configuration), plus the seconds of the checkpoint it continues from."""

    def __init__(self):
        self._since, self._carried = time.monotonic(), 0.0

    def seconds(self) -> float:
        return self._carried + time.monotonic() - self._since

    @contextmanager
    def paused(self):
        start = time.monotonic()
        try:
            yield
        finally:
            self._since += time.monotonic() - start

    def carry(self, seconds: float) -> None:
        """Continue from a checkpoint's count, as the trainable continues from its epoch."""
        self._carried = float(seconds)


class RayReporter(Reporter):
    def __init__(self, metric: str, mode: str, seed: int, trials_per_worker: int = 1, node: str = ""):
        self.metric, self.mode, self._seed = metric, mode, seed
        self.trials_per_worker = trials_per_worker
        self.node = node
        self.clock = TrainClock()

    @property
    def seed(self) -> int:
        return self._seed

    def _emit(self, metrics, checkpoint):
        seconds = round(self.clock.seconds(), 3)
        metrics = {**metrics, NODE_KEY: self.node, TRAIN_SECONDS: seconds}
        with self.clock.paused():
            if checkpoint is None:
                tune.report(metrics)
                return
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(checkpoint, Path(tmp) / CHECKPOINT_FILE)
                (Path(tmp) / CLOCK_FILE).write_text(json.dumps({TRAIN_SECONDS: seconds}))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def restore(self):
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as path:
            clock = Path(path) / CLOCK_FILE
            if clock.exists():  # a checkpoint written before the clock existed continues from 0 s
                self.clock.carry(json.loads(clock.read_text())[TRAIN_SECONDS])
            return torch.load(Path(path) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


class _ThreadStreams:
    """sys.stdout/sys.stderr for a Ray worker: each write goes to the file of the trial running in the
    writing thread, else to the original stream. Ray runs a function trial in a thread of its own and, with
    actor reuse, the next trial can start before the last one's thread has unwound; swapping the global
    streams per trial (contextlib.redirect_stdout) then sends one trial's output to another's file."""

    def __init__(self, original):
        self.original = original
        self.local = threading.local()

    def write(self, text):
        return (getattr(self.local, "file", None) or self.original).write(text)

    def flush(self):
        (getattr(self.local, "file", None) or self.original).flush()

    def __getattr__(self, name):
        return getattr(self.original, name)


class _TrialOutput:
    def __init__(self):
        self.streams: tuple[_ThreadStreams, _ThreadStreams] | None = None

    @contextmanager
    def to(self, file):
        if self.streams is None:  # installed once per worker process
            self.streams = (_ThreadStreams(sys.stdout), _ThreadStreams(sys.stderr))
            sys.stdout, sys.stderr = self.streams
        for stream in self.streams:
            stream.local.file = file
        try:
            yield
        finally:
            for stream in self.streams:
                stream.local.file = None


_TRIAL_OUTPUT = _TrialOutput()


def make_trial_function(
    trainable_ref: str, metric: str, mode: str, threads: int, cwd: str, experiment: str, trials_per_worker: int = 1
):
    """The function Ray runs per trial. It resolves the trainable inside the worker, so a user's
    `pkg.module:function` is imported from the directory `hpsearch` was started in (on this machine) or
    from the project Ray shipped (on a cluster)."""

    def hpsearch_trial(config: dict) -> None:
        import ray

        if cwd and cwd not in sys.path:
            sys.path.insert(0, cwd)
        torch.set_num_threads(threads)
        config = dict(config)
        seed = int(config.pop("seed", 0))  # set per trial by the searcher; not a hyperparameter of the model
        # The trial's own output goes to the storage (for `hpsearch logs` from any machine), not the console.
        log_path = trial_log(experiment, tune.get_context().get_trial_id())
        log_path.parent.mkdir(parents=True, exist_ok=True)
        node = ray.get_runtime_context().get_node_id()
        with open(log_path, "a", buffering=1) as log, _TRIAL_OUTPUT.to(log):
            try:
                reporter = RayReporter(metric, mode, seed, trials_per_worker, node)
                get_trainable(trainable_ref).train(config, reporter)
            except SystemExit:
                raise  # how Ray ends a trial it stops (ASHA, a budget): not an error
            except BaseException:
                traceback.print_exc(file=log)  # Ray also writes error.txt; this keeps output and traceback together
                raise

    return hpsearch_trial
