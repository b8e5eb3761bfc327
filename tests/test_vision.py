"""The image trainables end to end: every pair listed, every built-in study planned from a data root of tiny
files in torchvision's formats, and one short sweep per task type through the CLI, checked in MLflow and
Optuna afterwards."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from search import api
from studies import UserError, builtin_studies
from tests.test_datasets import write_cifar10, write_flowers, write_mnist
from tests.test_search import optuna_trials
from tracking import Store, parent_runs
from trainables._vision import PAIRS

NEEDS_ROOT = {
    "mnist-cnn": "mnist",
    "fashion-mnist-mlp": "fashion",
    "cifar10-resnet": "cifar10",
    "flowers102-transfer": "flowers",
}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_HOME", str(tmp_path / "home"))
    return tmp_path


def test_trainables_lists_every_pair_with_its_hyperparameters(cli):
    code, out, _ = cli("trainables", "--format", "json")
    rows = {r["name"]: r for r in json.loads(out)}
    for name, _, _, _ in PAIRS:
        assert name in rows, name
    assert {"channels_l0", "n_blocks", "norm", "flip", "crop", "schedule", "warmup_epochs"} <= set(
        rows["cifar10-resnet"]["hyperparameters"]
    )
    assert rows["shapes-unet"]["metric"] == "val_iou" and rows["digits-autoencoder"]["metric"] == "val_mse"
    assert {"freeze_backbone", "arch", "pretrained"} <= set(rows["flowers102-transfer"]["hyperparameters"])


@pytest.fixture
def torch_hub(tmp_path):
    """A torch cache holding 'pretrained' weights: a freshly initialised resnet18 saved where torchvision's
    own download would put the real ones (nothing can be downloaded here)."""
    import torchvision

    from trainables._transfer import pretrained_weights_file

    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    path = pretrained_weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    yield
    torch.hub.set_dir(before)


def test_every_builtin_study_plans_and_trains_from_its_data_root(home, monkeypatch, torch_hub):
    """Each built-in study is planned (its data set read through torchvision's loaders from a data root of
    tiny files) and its trainable trains one epoch of one configuration from the study (the check's)."""
    from search.engine._check import middle
    from trainables import MemoryReporter

    root = home / "data"
    rng = np.random.default_rng(0)
    write_mnist(root, "MNIST", rng)
    write_mnist(root, "FashionMNIST", rng)
    write_cifar10(root, monkeypatch, rng)
    write_flowers(root, monkeypatch)
    for name in builtin_studies():
        if name == "digits-encoder-classifier":
            with pytest.raises(UserError, match="study 'digits-autoencoder' has no best checkpoint yet; run it first"):
                api.plan(name)
            continue
        plan = api.plan(name, data_root=str(root) if name in NEEDS_ROOT else None)
        assert plan.trainable.name == plan.spec.trainable
        if name in NEEDS_ROOT:
            assert plan.inputs["data_root"] == str(root.resolve())
        config = {
            **plan.spec.fixed,
            **{k: middle(p) for k, p in plan.spec.space.items() if not p.when},
            **plan.inputs,
            "epochs": 1,
            "batch_size": 16,
        }
        reporter = MemoryReporter(metric=plan.metric, mode=plan.mode)
        plan.trainable.train(config, reporter)
        assert reporter.results[0]["epoch"] == 1 and plan.metric in reporter.results[0], name


def test_a_missing_data_set_is_one_line_and_exit_2(home, cli):
    code, out, err = cli("run", "mnist-cnn", "--data-root", home / "nothing")
    assert code == 2 and err.count("\n") == 1
    assert "mnist-cnn: data: mnist: no data under" in err and "MNIST/raw" in err and "--data-root" in err
    assert not (home / "home").exists() or not list((home / "home").rglob("*.db"))  # nothing was recorded


def _write_folder_of_images(root, rng):
    """Three classes told apart by colour, with noise: a user's own ImageFolder."""
    colours = [(220, 40, 40), (40, 220, 40), (40, 40, 220)]
    for label, colour in enumerate(colours):
        (root / f"class_{label}").mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / f"class_{label}" / f"{i}.png")


def _study(path, **fields):
    path.write_text(
        yaml.safe_dump(
            {"asha": {"max_t": 3, "grace_period": 3}, "trials": 2, "max_concurrent": 2, "sampler": "random", **fields}
        )
    )
    return path


def test_a_folder_of_images_sweeps_with_no_code(home, cli):
    """Classification: a user's ImageFolder, a study file and the CLI; per-class test accuracy at the end."""
    _write_folder_of_images(home / "pets", np.random.default_rng(1))
    spec = _study(
        home / "pets.yaml",
        name="pets",
        trainable="imagefolder-cnn",
        space={"lr": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True}},
        fixed={"batch_size": 16, "flip": True, "crop": 2},
    )
    code, out, err = cli("run", spec, "--data-root", home / "pets")
    assert code == 0, err
    best_line = out.split("best: trial")[1].splitlines()[0]
    assert "test_accuracy=" in best_line and "_class_" not in best_line  # per-class values stay in MLflow
    rows = api.results("pets").to_dict("records")
    assert len(rows) == 2 and {r["state"] for r in rows} == {"completed"}
    assert max(r["metric"] for r in rows) > 0.6  # val_accuracy; three colours: well above a third
    parent = parent_runs(Store(None), "pets")[0]
    tests = {k: v for k, v in parent.data.metrics.items() if k.startswith("test_")}
    assert {"test_accuracy", "test_accuracy_class_0", "test_accuracy_class_1", "test_accuracy_class_2"} <= set(tests)
    assert {t.state.name for t in optuna_trials(home / "home", "pets")} == {"COMPLETE"}


def test_segmentation_sweep_scores_iou_and_dice(home, cli):
    spec = _study(
        home / "seg.yaml",
        name="seg",
        trainable="shapes-unet",
        space={"base_channels": {"type": "int", "low": 4, "high": 8}},
        fixed={"limit": 64, "batch_size": 16, "depth": 2, "lr": 3e-3},
    )
    code, _, err = cli("run", spec)
    assert code == 0, err
    rows = api.results("seg").to_dict("records")
    assert len(rows) == 2 and all(0 < r["metric"] <= 1 for r in rows)  # val_iou
    metrics = parent_runs(Store(None), "seg")[0].data.metrics
    assert (
        0 < metrics["test_iou"] <= 1 and 0 < metrics["test_dice"] <= 1 and metrics["test_dice"] >= metrics["test_iou"]
    )


def test_autoencoder_then_a_classifier_on_its_frozen_encoder(home, cli, monkeypatch):
    """Reconstruction, then the classifier's second stage naming the first study in `encoder_from`."""
    ae = _study(
        home / "ae.yaml",
        name="ae",
        trainable="digits-autoencoder",
        space={"latent": {"type": "int", "low": 8, "high": 16}},
        fixed={"kind": "mlp", "lr": 3e-3, "batch_size": 32, "limit": 300},
    )
    code, _, err = cli("run", ae)
    assert code == 0, err
    rows = api.results("ae").to_dict("records")
    assert len(rows) == 2 and all(0 < r["metric"] < 0.2 for r in rows)  # val_mse on 0..1 pixels
    metrics = parent_runs(Store(None), "ae")[0].data.metrics
    assert metrics["test_psnr"] == pytest.approx(10 * np.log10(1 / metrics["test_mse"]))
    clf = _study(
        home / "clf.yaml",
        name="clf",
        trainable="digits-encoder-classifier",
        encoder_from="ae",
        space={"lr": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True}},
        fixed={"freeze_encoder": True, "batch_size": 32, "limit": 300},
    )
    code, _, err = cli("run", clf)
    assert code == 0, err
    assert {r["state"] for r in api.results("clf").to_dict("records")} == {"completed"}
    # The frozen encoder in the classifier's best checkpoint is the autoencoder's best encoder, unchanged.
    import tracking

    store = Store(None)
    encoder = tracking.load_best_checkpoint(store, parent_runs(store, "ae")[0].info.run_id)["model"]
    classifier = tracking.load_best_checkpoint(store, parent_runs(store, "clf")[0].info.run_id)["model"]
    shared = [k for k in encoder if k.startswith("encoder.")]
    assert shared and all(torch.equal(encoder[k], classifier[k]) for k in shared)
    # `check` finds `ae`'s best checkpoint in the tracking store that the environment names, as `run` does
    # (it used to read only the data directory's).
    monkeypatch.setenv("HPSEARCH_TRACKING_URI", store.tracking_uri)
    monkeypatch.setenv("HPSEARCH_HOME", str(home.parent / "elsewhere"))
    code, out, err = cli("check", clf)
    assert code in (0, 1) and "[  ok] data" in out, out + err
