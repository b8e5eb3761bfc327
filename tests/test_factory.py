"""`trainables.from_model`: a user's own model and data, first class.

The factory's rules in process (tiny tensors, 1-3 epochs), then user projects outside the repository swept,
checked, reported and promoted through the CLI as a user would, their promoted models served from raw inputs.
A classifier's whole way (sweep, check, report, promote, serve) is the README's own project, run once for its
test and that one: tests/test_readme.py."""

import contextlib
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import run_cli
from trainables import MemoryReporter, data_sanity, from_model, overfit_one_batch
from trainables._userdata import Stream


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """The share of raw inputs `x` whose served class (the argmax) is their known class `y`."""
    with torch.no_grad():
        return float((np.asarray(model(torch.from_numpy(x))).argmax(1) == np.asarray(y)).mean())


@contextlib.contextmanager
def mlflow_uris(uri: str):
    """This process's MLflow tracking and registry at `uri` for the block, then back as they were: the module
    globals and the MLFLOW_* variables that mlflow sets for subprocesses (which `run_cli` would pass on)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking_service

    saved = tracking_service._tracking_uri, registry._registry_uri
    variables = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry._registry_uri = saved[1]
        for name, value in variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    x, y, _ = SIGNALS.samples(config, "test")  # raw signals of known classes: served as the test scored them
    assert accuracy(model, x, y) == pytest.approx(tested["test_accuracy"], abs=1e-6)
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
    (image, codes), y = _regression_data({})[2]  # the test rows, packed as the served model takes them
    with torch.no_grad():
        served = model(torch.cat([image.flatten(1), codes.float()], 1)).numpy()
    tested = trainable.evaluate(config, state, "test")["test_mse"]
    assert float(((served - y) ** 2).mean()) == pytest.approx(tested, rel=1e-5)  # the known targets, as tested
    setup = trainable.setup(config)
    assert data_sanity(setup, setup.model()).status == "ok" and setup.n_classes is None
    assert overfit_one_batch(setup, 0.01).status == "ok"  # on the packed inputs: 26.8 -> 0.53 in 74 steps
    assert overfit_one_batch(setup, 0.0).status == "FAIL"  # and it can tell: nothing learns at lr 0


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
    assert x.dtype == np.uint8 and accuracy(model, x, y) == 1.0  # raw images of known brightness, all right
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
    with mlflow_uris(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"):
        served = mlflow.pyfunc.load_model("models:/streamed@champion")
    images = rng.integers(0, 255, (3, 3, 8, 8), dtype=np.uint8)  # raw uint8 images, as the Dataset gives them
    assert np.asarray(served.predict(images)).shape == (3, 2)
    user = {"__file__": str(tmp_path / "pngs.py")}
    exec(IMAGE_MODULE, user)  # the project's own test PNGs, of known classes (bright 0, dark 1), read as it reads them
    tests = user["data"]({})[2]
    images, labels = np.stack([np.asarray(x) for x, _ in tests]), np.array([y for _, y in tests])
    predicted = np.asarray(served.predict(images)).argmax(1)
    tested = json.loads(promoted.stdout)["test_metrics"]["test_accuracy"]
    print("served pngs:", float((predicted == labels).mean()), tested)
    assert images.dtype == np.uint8 and float((predicted == labels).mean()) == pytest.approx(tested, abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_factorys_tensor_path_takes_the_recorded_step():
    reporter = MemoryReporter(seed=0)
    SIGNALS.train({"epochs": 2, "lr": 0.03, "batch_size": 32, "compile": "graph"}, reporter)
    assert reporter.results[0]["step_graph"] == 1.0  # each training step one CUDA graph replay
    assert reporter.results[-1]["train_loss"] < reporter.results[0]["train_loss"]


def test_the_multi_input_network_is_a_builtin_on_the_factory():
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
    tested = trainable.evaluate(config, state, "test")["test_accuracy"]
    x, y, _ = trainable.samples(config, "test")  # raw pixels and sums of digits of known classes
    served = accuracy(model, x, y)
    assert served > 0.8 and served == pytest.approx(tested, abs=1e-6)  # 0.90 after 2 epochs; chance is 0.1
