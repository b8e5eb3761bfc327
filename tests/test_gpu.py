"""The GPU paths: data resident on the device, bf16, the whole step as one CUDA graph, a compiled model reused
across trials, data fed from the host when it does not fit, packed trials.
Skipped without CUDA; they run for real where a GPU is lent (see BENCHMARKS.md for the runs)."""

import io

import pytest
import torch
import yaml

from search import api
from trainables import MemoryReporter, _device
from trainables._loop import Prep, Split, fit

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _images(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(4, 3, 16, 16, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    x = ((0.6 * templates[y] + 0.4 * torch.rand(n, 3, 16, 16, generator=g)) * 255).to(torch.uint8)
    return x, y


def _cnn(config):
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.GroupNorm(1, 16),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(16 * 8 * 8, 4),
    )


def _plain_cnn(config):  # no dropout: the same weights give the same losses, recorded or not
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 8 * 8, 4),
    )


def _fit(config, key, model=_cnn, augment=True):
    x, y = _images()
    reporter = MemoryReporter(seed=3)
    prep = Prep(mean=(0.5,) * 3, std=(0.25,) * 3, flip=augment, crop=2 if augment else 0)
    fit(
        {"epochs": 3, "batch_size": 64, "lr": 3e-3, **config},
        reporter,
        model,
        Split(x[:448], y[:448], key=(key, "train")),
        Split(x[448:], y[448:], key=(key, "val")),
        prep=prep,
    )
    return reporter


def test_data_moves_to_the_gpu_once_as_uint8_and_trains_in_bf16():
    reporter = _fit({"compile": "off"}, "resident")
    resident = _device._RESIDENT[((("resident", "train"), "x"), "cuda")]
    assert resident.dtype == torch.uint8 and resident.is_cuda  # compact, on the device
    again = _fit({"compile": "off"}, "resident")
    assert _device._RESIDENT[((("resident", "train"), "x"), "cuda")] is resident  # the next trial reuses the copy
    last = reporter.results[-1]
    assert last["peak_mem_mb"] > 0 and last["samples_per_s"] > 0 and last["val_accuracy"] > 0.5
    cuda = torch.device("cuda")
    assert isinstance(_device.autocast({}, cuda), torch.autocast) == torch.cuda.is_bf16_supported()
    assert not isinstance(_device.autocast({"precision": "fp32"}, cuda), torch.autocast)
    # Same seed, same data: the same run, up to the GPU's non-deterministic reductions.
    assert [r["val_loss"] for r in again.results] == pytest.approx([r["val_loss"] for r in reporter.results], rel=0.02)


@pytest.mark.parametrize("optimizer, schedule", [("adam", "cosine"), ("nesterov", "step"), ("adamw", "warmup_cosine")])
def test_the_whole_step_is_one_cuda_graph_replay_and_trains_as_eagerly(optimizer, schedule):
    config = {
        "optimizer": optimizer,
        "schedule": schedule,
        "lr_step_epochs": 1,
        "clip_grad_norm": 1.0,
        "weight_decay": 1e-4,
    }
    eager = _fit({**config, "compile": "off"}, "graph", model=_plain_cnn, augment=False)
    graph = _fit({**config, "compile": "graph"}, "graph", model=_plain_cnn, augment=False)
    assert "step_graph" not in eager.results[0] and graph.results[0]["step_graph"] == 1.0
    # The same kernels replayed: the same losses, and the schedule's lr reached the recorded update.
    assert [r["lr"] for r in graph.results] == [r["lr"] for r in eager.results]
    assert [r["train_loss"] for r in graph.results] == pytest.approx([r["train_loss"] for r in eager.results], rel=0.02)
    assert [r["val_loss"] for r in graph.results] == pytest.approx([r["val_loss"] for r in eager.results], rel=0.02)
    if optimizer == "adam":  # random flips, crops and dropout inside the graph (SGD at this lr learns too slowly)
        augmented = _fit({**config, "compile": "graph"}, "graph")
        assert augmented.results[0]["step_graph"] == 1.0 and augmented.results[-1]["val_accuracy"] > 0.5


def test_rmsprop_is_not_recorded_and_still_trains_on_the_gpu():
    reporter = _fit({"optimizer": "rmsprop", "lr": 1e-3, "compile": "auto"}, "rmsprop")
    assert "step_graph" not in reporter.results[0] and reporter.results[-1]["val_accuracy"] > 0.5


def test_a_split_without_room_on_the_gpu_is_fed_from_the_host(monkeypatch):
    monkeypatch.setattr(_device, "RESIDENT_SHARE", 0.0)  # as if the GPU were full
    reporter = _fit({"compile": "auto"}, "host")
    assert not [k for k in _device._RESIDENT if k[0][0] in (("host", "train"), ("host", "val"))]  # none copied whole
    assert "step_graph" not in reporter.results[0]  # a per-batch host copy cannot be recorded
    assert reporter.results[-1]["val_accuracy"] > 0.5 and reporter.results[-1]["samples_per_s"] > 0


def test_a_compiled_model_is_built_once_and_reused_with_fresh_weights():
    first = _fit({"compile": "on"}, "compiled")
    second = _fit({"compile": "on"}, "compiled")
    assert first.results[0]["compile_s"] > 0 and "compile_s" not in second.results[0]
    assert first.results[0]["step_graph"] == 1.0 == second.results[0]["step_graph"]  # compiled and recorded
    # The second trial starts from its own fresh weights, not the first one's trained ones: same seed, same run.
    assert [r["train_loss"] for r in second.results] == pytest.approx(
        [r["train_loss"] for r in first.results], rel=0.02
    )


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    return tmp_path


def test_four_trials_share_one_gpu_and_an_out_of_memory_stays_in_its_trial(home):
    spec = {
        "name": "packed",
        "trainable": "tests.faulty:train",
        "metric": "loss",
        "mode": "min",
        "space": {"fault": {"type": "categorical", "choices": ["gpu_a", "gpu_b", "gpu_c", "real_oom"]}},
        "sampler": "grid",
        "trials": 4,
        "max_concurrent": 4,
        "resources": {"cpus": 1, "gpus": 0.25},
        "fixed": {"marker_dir": str(home)},
        "asha": {"max_t": 3, "grace_period": 3},
    }
    (home / "packed.yaml").write_text(yaml.safe_dump(spec))
    outcome = api.run(str(home / "packed.yaml"), out=io.StringIO())
    assert outcome.counts == {"completed": 3, "pruned": 0, "stopped": 0, "failed": 1}
    rows = {r["params"]["fault"]: r for r in api.results("packed").to_dict("records")}
    assert rows["real_oom"]["reason"].startswith("oom: ")
    assert all(rows[f]["state"] == "completed" and rows[f]["epochs"] == 3 for f in ("gpu_a", "gpu_b", "gpu_c"))
