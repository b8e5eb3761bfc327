"""`trainables.from_model`: a user's own model and data, first class.

The factory's rules in process (tiny tensors, 1-3 epochs), then a user project outside the repository swept,
checked, reported and promoted through the CLI as a user would, its promoted model served from raw inputs."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import run_cli, spawn_cli
from trainables import MemoryReporter, data_sanity, from_model, overfit_one_batch
from trainables._userdata import Stream


def _signals(n: int = 300, seed: int = 0):
    """A 1-D signal per example (N, 1, 32): a sine whose frequency is the class, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.sin(torch.linspace(0, 6.28, 32) * (y[:, None] + 1)) + 0.3 * torch.randn(n, 32, generator=g)
    return x[:, None, :], y


def _conv1d(config):
    return nn.Sequential(
        nn.Conv1d(1, config["channels"], 5, padding=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(config["channels"], 3),
    )


def _signal_data(config):
    x, y = _signals()
    return (x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:])


SIGNALS = from_model(
    _conv1d, _signal_data, hyperparameters={"channels": "conv channels"}, defaults={"channels": 8}, name="test-signals"
)


def test_tensors_train_on_the_loop_resume_from_a_checkpoint_and_export_raw_inputs():
    reporter = MemoryReporter(seed=0)
    SIGNALS.train({"epochs": 3, "lr": 0.03, "batch_size": 16, "schedule": "cosine", "clip_grad_norm": 1.0}, reporter)
    assert [r["epoch"] for r in reporter.results] == [1, 2, 3]
    assert reporter.results[-1]["train_loss"] < reporter.results[0]["train_loss"]
    first = reporter.checkpoints[0]
    assert set(first) >= {"model", "optimizer", "rng", "progress"}
    resumed = MemoryReporter(seed=0, checkpoint=first)
    SIGNALS.train({"epochs": 3, "lr": 0.03, "batch_size": 16, "schedule": "cosine", "clip_grad_norm": 1.0}, resumed)
    assert [r["epoch"] for r in resumed.results] == [
        first["progress"]["epoch"] + 1 + i for i in range(3 - first["progress"]["epoch"])
    ]
    config, state = {**SIGNALS.defaults, "lr": 0.03}, reporter.checkpoints[-1]["model"]
    tested = SIGNALS.evaluate(config, state, "test")
    assert set(tested) >= {"test_accuracy", "test_loss", "test_accuracy_class_0"}
    model, example = SIGNALS.export(config, state)
    assert example.shape == (4, 1, 32) and model(torch.from_numpy(example)).shape == (4, 3)
    assert SIGNALS.data_info({})["fingerprint"] == SIGNALS.data_info({"lr": 1.0})["fingerprint"]


def test_data_is_built_once_per_data_configuration_keyed_by_the_config_keys_it_reads():
    calls = []

    def data(config):
        calls.append(config["size"])
        x, y = _signals(config["size"])
        return (x[:-40], y[:-40]), (x[-40:-20], y[-40:-20]), (x[-20:], y[-20:])

    trainable = from_model(_conv1d, data, defaults={"channels": 4, "size": 80}, name="test-cache")
    for config in ({"lr": 0.1}, {"lr": 0.01, "channels": 8}, {"size": 100}, {"size": 100, "lr": 0.3}):
        trainable.train({**config, "epochs": 1}, MemoryReporter())
    assert calls == [80, 100]  # lr and channels are not read by data(): they do not rebuild it


class _TwoInputs(nn.Module):
    """An image-like branch and a vector branch (one of integer codes), concatenated."""

    def __init__(self, config):
        super().__init__()
        self.image, self.vector = nn.Linear(16, 8), nn.Linear(3, 8)
        self.head = nn.Linear(16, 2)

    def forward(self, image, codes):
        return self.head(torch.relu(torch.cat([self.image(image.flatten(1)), self.vector(codes.float())], 1)))


class _Standardise(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, image, codes):
        return (image - self.mean) / self.std, codes


def _regression_data(config):
    g = torch.Generator().manual_seed(0)
    image, codes = 5 + 3 * torch.randn(160, 4, 4, generator=g), torch.randint(0, 4, (160, 3), generator=g)
    y = torch.stack([image.mean((1, 2)), codes.float().sum(1)], 1).numpy().astype(np.float64)  # two outputs

    def rows(a, b):
        return (image[a:b], codes[a:b]), y[a:b]

    return rows(0, 100), rows(100, 130), rows(130, 160)


def test_a_two_input_regression_is_minimised_preprocessed_and_served_from_one_raw_array():
    trainable = from_model(
        _TwoInputs,
        _regression_data,
        task="regression",
        name="test-two-inputs",
        preprocess=lambda config, x: _Standardise(x[0].mean(0), x[0].std(0)),
    )
    assert (trainable.metric, trainable.mode) == ("val_mse", "min")
    reporter = MemoryReporter(metric="val_mse", mode="min")
    trainable.train({"epochs": 3, "lr": 0.03, "optimizer": "adam"}, reporter)
    values = [r["val_mse"] for r in reporter.results]
    assert values[-1] < values[0] and {"val_mae", "val_loss"} <= set(reporter.results[0])
    config, state = trainable.defaults, reporter.checkpoints[-1]["model"]
    assert set(state) == set(_TwoInputs({}).state_dict())  # the user's own module: no wrapper in the checkpoint
    model, example = trainable.export(config, state)
    assert example.shape == (4, 16 + 3) and example.dtype == np.float32  # both inputs side by side
    exported = torch.export.export(model, (torch.from_numpy(example),))
    assert exported.module()(torch.from_numpy(example)).shape == (4, 2)
    setup = trainable.setup(config)
    assert data_sanity(setup, setup.model()).status == "ok" and setup.n_classes is None
    assert overfit_one_batch(setup, 0.01).status in ("ok", "FAIL")  # runs on the packed inputs


class _Images(torch.utils.data.Dataset):
    """uint8 images (1, 8, 8): the class is the brightness."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return (torch.rand(1, 8, 8, generator=g) * 100 + 120 * (i % 2)).to(torch.uint8), i % 2


@pytest.mark.parametrize("materialise_mb", [1024, 0])
def test_a_dataset_is_materialised_when_small_and_streamed_otherwise(materialise_mb):
    trainable = from_model(
        lambda c: nn.Sequential(nn.Flatten(), nn.Linear(64, 2)),
        lambda c: (_Images(64), _Images(32), _Images(32)),
        materialise_mb=materialise_mb,
        name=f"test-images-{materialise_mb}",
    )
    reporter = MemoryReporter()
    trainable.train({"epochs": 2, "lr": 0.05, "batch_size": 16, "flip": True}, reporter)
    assert reporter.results[-1]["val_accuracy"] == 1.0
    config, state = trainable.defaults, reporter.checkpoints[-1]["model"]
    assert trainable.evaluate(config, state, "test")["test_accuracy"] == 1.0
    model, example = trainable.export(config, state)
    assert example.dtype == np.uint8 and model(torch.from_numpy(example)).shape == (4, 2)  # serves raw uint8
    x, y, shape = trainable.samples(config, "val")
    assert shape == (8, 8) and len(x) == len(y) == 32
    from trainables._reporter import _WORKER_CACHE

    data = [v for k, v in _WORKER_CACHE.items() if k[:2] == ("trainables.from_model", f"test-images-{materialise_mb}")]
    assert isinstance(data[0].train, Stream) == (materialise_mb == 0)


def test_errors_a_user_can_cause_say_what_would_be_valid():
    with pytest.raises(ValueError, match="task must be one of"):
        from_model(_conv1d, _signal_data, task="ranking")
    with pytest.raises(ValueError, match="needs a loss"):
        from_model(_conv1d, _signal_data, task=None)
    floats = from_model(_conv1d, lambda c: ((torch.zeros(4, 1, 32), torch.zeros(4)),) * 3, name="test-floats")
    with pytest.raises(ValueError, match="use task='regression'"):
        floats.train({"epochs": 1}, MemoryReporter())


# ---- a user project, outside the repository, through the CLI -------------------------------------------------

USER_MODULE = """
import torch
from torch import nn
from trainables import from_model


def model(config):
    return nn.Sequential(nn.Conv1d(1, config["channels"], 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                         nn.Flatten(), nn.Linear(config["channels"], 3))


def data(config):
    g = torch.Generator().manual_seed(config["split_seed"])
    y = torch.randint(0, 3, (300,), generator=g)
    x = (torch.sin(torch.linspace(0, 6.28, 32) * (y[:, None] + 1)) + 0.3 * torch.randn(300, 32, generator=g))[:, None]
    return (x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:])


def wave(config):
    return nn.Sequential(nn.Linear(8, config["hidden"]), nn.Tanh(), nn.Linear(config["hidden"], 1))


def wave_data(config):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 8, generator=g)
    y = x[:, :4].sum(1) - x[:, 4:].sum(1)  # (N,): the model's (N, 1) output is read as one value each
    return (x[:160], y[:160]), (x[160:200], y[160:200]), (x[200:], y[200:])


def odd(config, reporter):  # a plain train function whose checkpoint has no "model" state_dict
    for epoch in range(1, config["epochs"] + 1):
        reporter.report(epoch, {"loss": (config["x"] - 0.3) ** 2 + 1 / epoch}, checkpoint={"weights": [epoch]})


class Moody(nn.Module):  # data-dependent Python control flow: torch.export cannot trace it
    def __init__(self, config):
        super().__init__()
        self.linear = nn.Linear(8, 1)

    def forward(self, x):
        return self.linear(x) if float(x.sum()) > 0 else -self.linear(x)


signals = from_model(model, data, hyperparameters={"channels": "conv channels"}, defaults={"channels": 8})
regression = from_model(wave, wave_data, task="regression", hyperparameters={"hidden": "units"},
                        defaults={"hidden": 16})
moody = from_model(Moody, wave_data, task="regression")
"""

STUDY = """\
name: {name}
trainable: {trainable}
space:
  lr: {{type: float, low: 1.0e-3, high: 1.0e-1, log: true}}
trials: {trials}
asha: {{max_t: 2, grace_period: 2}}
max_concurrent: 2
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    (root / "project").mkdir()
    (root / "project" / "signals.py").write_text(USER_MODULE)
    (root / "project" / "signals.yaml").write_text(STUDY.format(name="signals", trainable="signals:signals", trials=3))
    (root / "project" / "wave.yaml").write_text(STUDY.format(name="wave", trainable="signals:regression", trials=2))
    (root / "project" / "moody.yaml").write_text(STUDY.format(name="moody", trainable="signals:moody", trials=1))
    (root / "project" / "odd.yaml").write_text(
        STUDY.format(name="odd", trainable="signals:odd", trials=2).replace(
            "lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}", "x: {type: float, low: 0.0, high: 1.0}"
        )
        + "metric: loss\nmode: min\n"
    )
    env = {"HPSEARCH_HOME": str(root / "home")}
    return root / "project", env, f"sqlite:///{root / 'home' / 'mlflow.db'}"


def test_a_user_project_sweeps_checks_reports_and_promotes_a_model_that_serves_raw_inputs(project):
    import mlflow

    folder, env, uri = project
    swept = run_cli("run", "signals.yaml", cwd=folder, env=env)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert "test_accuracy" in swept.stdout
    assert "Token authentication" not in swept.stdout + swept.stderr  # Ray's notice stays out of the console
    checked = run_cli("check", "signals.yaml", cwd=folder, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert all(name in checked.stdout for name in ("data", "overfit one batch", "lr range"))
    reported = run_cli("report", "signals", "--output", folder / "signals.html", cwd=folder, env=env)
    assert reported.returncode == 0, reported.stderr
    assert "confusion matrix" in (folder / "signals.html").read_text()
    promoted = run_cli("promote", "signals", "--format", "json", cwd=folder, env=env)
    assert promoted.returncode == 0, promoted.stderr
    reseeded = run_cli(
        "promote", "signals", "--candidates", "2", "--reseeds", "1", "--format", "json", cwd=folder, env=env
    )
    assert reseeded.returncode == 0, reseeded.stdout + reseeded.stderr
    info = json.loads(reseeded.stdout)
    assert len(info["candidates"]) == 2 and all(len(c["values"]) == 2 for c in info["candidates"])

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    served = mlflow.pyfunc.load_model(f"models:/signals@{info['alias']}")
    x = np.sin(np.linspace(0, 6.28, 32, dtype=np.float32) * 2)[None, None].repeat(3, 0)  # raw signals, class 1
    assert np.asarray(served.predict(x)).shape == (3, 3)


def test_a_user_regression_is_minimised(project):
    folder, env, _ = project
    swept = run_cli("run", "wave.yaml", cwd=folder, env=env)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    rows = json.loads(run_cli("results", "wave", "--format", "json", cwd=folder, env=env).stdout)
    values = [r["metric"] for r in rows]
    assert len(values) == 2 and values == sorted(values)  # best (smallest val_mse) first
    assert "test_mse" in swept.stdout and "test_mae" in swept.stdout


def test_an_odd_checkpoint_or_an_unexportable_model_still_finishes_the_sweep_and_says_why_in_one_line(project):
    folder, env, _ = project
    odd = run_cli("run", "odd.yaml", cwd=folder, env=env)
    assert odd.returncode == 0, odd.stdout + odd.stderr
    assert 'has no state_dict under "model"' in odd.stdout and "Traceback" not in odd.stderr
    assert len(json.loads(run_cli("results", "odd", "--format", "json", cwd=folder, env=env).stdout)) == 2
    for promote in (("promote", "odd"), ("promote", "odd", "--candidates", "1", "--reseeds", "1")):
        refused = run_cli(*promote, cwd=folder, env=env)  # retraining would not give a model either
        assert refused.returncode == 2 and 'has no state_dict under "model"' in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1

    moody = run_cli("run", "moody.yaml", cwd=folder, env=env)
    assert moody.returncode == 0, moody.stdout + moody.stderr
    assert "no servable model: exporting the best model failed" in moody.stdout and "test_mse" in moody.stdout
    promoted = run_cli("promote", "moody", cwd=folder, env=env)
    assert promoted.returncode == 2 and len(promoted.stderr.strip().splitlines()) == 1, promoted.stderr
    assert "torch.export" in promoted.stderr and "export hook" in promoted.stderr


SLOW_MODULE = """
import time

import torch
from torch import nn
from trainables import from_model


class Slow(nn.Module):  # a user's model that takes its time: 8 epochs of about 0.5 s
    def __init__(self, config):
        super().__init__()
        self.linear = nn.Linear(8, 2)

    def forward(self, x):
        time.sleep(0.1)
        return self.linear(x)


def data(config):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 8, generator=g)
    y = (x.sum(1) > 0).long()
    return (x[:160], y[:160]), (x[160:200], y[160:200]), (x[200:], y[200:])


slow = from_model(Slow, data, defaults={"epochs": 8, "batch_size": 64})
"""


def test_a_user_trainable_killed_mid_sweep_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL of the whole `hpsearch run` (a crash or reboot) while a trial of a user's own model is mid-way;
    `--resume` continues that trial from its last checkpoint, in the user's project folder."""
    import os
    import signal
    import time

    import tracking

    (tmp_path / "slow.py").write_text(SLOW_MODULE)
    (tmp_path / "slow.yaml").write_text(
        STUDY.format(name="slow", trainable="slow:slow", trials=3).replace(
            "max_t: 2, grace_period: 2", "max_t: 8, grace_period: 8"
        )
    )
    home = tmp_path / "home"
    env = {"HPSEARCH_HOME": str(home)}
    proc = spawn_cli("run", "slow.yaml", cwd=tmp_path, env=env)
    try:  # until a trial has checkpointed its third epoch (the loop checkpoints each epoch that improves)
        deadline = time.monotonic() + 300
        while not list(home.glob("ray/slow-*/*/checkpoint_00000[2-7]")):
            assert time.monotonic() < deadline and proc.poll() is None, "no trial got to its third epoch"
            time.sleep(0.2)
        time.sleep(1)  # Ray saves its experiment state right after each trial checkpoint
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)

    resumed = run_cli("run", "slow.yaml", "--resume", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming run" in resumed.stdout and "test_accuracy" in resumed.stdout
    outputs = [p.read_text() for p in home.glob("ray/slow-*/hpsearch-logs/*.log")]
    assert any("resuming at epoch" in text for text in outputs), outputs  # not started over
    store = tracking.Store(home=home)
    (parent,) = tracking.parent_runs(store, "slow")
    rows = tracking.trial_rows(store, parent)
    assert parent.info.status == "FINISHED" and {r["status"] for r in rows} <= {"FINISHED", "FAILED"}
    assert len({r["trial_id"] for r in rows}) == len(rows) >= 3


IMAGE_MODULE = """
from pathlib import Path

from torch import nn
from torchvision import datasets, transforms
from trainables import from_model

ROOT = Path(__file__).parent / "images"


def model(config):
    conv = nn.Conv2d(3, 8, 3, padding=1)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def data(config):
    to_tensor = transforms.Compose([transforms.Resize((8, 8)), transforms.PILToTensor()])  # uint8 (3, 8, 8)
    return tuple(datasets.ImageFolder(ROOT / split, transform=to_tensor) for split in ("train", "val", "test"))


read_once = from_model(model, data)
streamed = from_model(model, data, materialise_mb=0, name="streamed")
"""


def test_an_imagefolder_of_pngs_read_once_or_streamed_sweeps_and_serves_uint8_images(tmp_path):
    import mlflow
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 6), ("test", 6)):
        for label, (low, high) in (("dark", (0, 100)), ("bright", (150, 255))):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(low, high, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "images" / split / label / f"{i}.png")
    (tmp_path / "pngs.py").write_text(IMAGE_MODULE)
    env = {"HPSEARCH_HOME": str(tmp_path / "home")}
    for name in ("read_once", "streamed"):
        (tmp_path / f"{name}.yaml").write_text(STUDY.format(name=name, trainable=f"pngs:{name}", trials=1))
        swept = run_cli("run", f"{name}.yaml", cwd=tmp_path, env=env)
        assert swept.returncode == 0, swept.stdout + swept.stderr
        assert "test_accuracy" in swept.stdout
    reported = run_cli("report", "read_once", "--output", tmp_path / "pngs.html", cwd=tmp_path, env=env)
    assert reported.returncode == 0, reported.stderr
    page = (tmp_path / "pngs.html").read_text()
    assert "confusion matrix" in page and "sample predictions" in page  # the colour images, drawn
    checked = run_cli("check", "streamed.yaml", cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    promoted = run_cli("promote", "streamed", "--format", "json", cwd=tmp_path, env=env)
    assert promoted.returncode == 0, promoted.stderr
    uri = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    served = mlflow.pyfunc.load_model("models:/streamed@champion")
    images = rng.integers(0, 255, (3, 3, 8, 8), dtype=np.uint8)  # raw uint8 images, as the Dataset gives them
    assert np.asarray(served.predict(images)).shape == (3, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_factorys_tensor_path_takes_the_recorded_step():
    reporter = MemoryReporter(seed=0)
    SIGNALS.train({"epochs": 2, "lr": 0.03, "batch_size": 32, "compile": "graph"}, reporter)
    assert reporter.results[0]["step_graph"] == 1.0  # each training step one CUDA graph replay
    assert reporter.results[-1]["train_loss"] < reporter.results[0]["train_loss"]


def test_the_notes_multi_input_network_is_a_builtin_on_the_factory():
    from trainables import get_trainable

    trainable = get_trainable("digits-multi-input")
    reporter = MemoryReporter(seed=0)
    trainable.train({"epochs": 2, "lr": 3e-3}, reporter)
    assert reporter.results[-1]["val_accuracy"] > 0.5
    config, state = trainable.defaults, reporter.checkpoints[-1]["model"]
    model, example = trainable.export(config, state)
    assert example.shape == (4, 64 + 16) and example.max() > 1  # raw pixels 0..16, then the raw sums
    exported = torch.export.export(model, (torch.from_numpy(example),))
    assert exported.module()(torch.from_numpy(example)).shape == (4, 10)
    setup = trainable.setup(config)
    assert data_sanity(setup, setup.model()).status == "ok" and setup.n_classes == 10
    assert "test_accuracy" in trainable.evaluate(config, state, "test")
