"""Trainables by name and by import path from a module outside the repository."""

import sys
import textwrap

import pytest

from trainables import MemoryReporter, Trainable, get_trainable, list_trainables, register

USER_MODULE = """
from trainables import Trainable

def train(config, reporter):
    for epoch in range(1, config["epochs"] + 1):
        reporter.report(epoch, {"score": config["x"] * epoch})

described = Trainable(name="my-pair", train=train, metric="score", mode="max", hyperparameters={"x": "a number"})
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models").mkdir()
    (tmp_path / "my_models" / "__init__.py").write_text("")
    (tmp_path / "my_models" / "pairs.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_models.pairs"
    for name in [m for m in sys.modules if m.startswith("my_models")]:
        del sys.modules[name]


def test_builtins_are_registered_by_name():
    names = [t.name for t in list_trainables()]
    assert {"digits-mlp", "digits-cnn"} <= set(names)
    cnn = get_trainable("digits-cnn")
    assert (cnn.metric, cnn.mode) == ("val_accuracy", "max")
    assert {"lr", "batch_size", "optimizer", "dropout", "channels1"} <= set(cnn.hyperparameters)


def test_unknown_name_lists_known_names():
    with pytest.raises(
        LookupError,
        match="unknown trainable 'nope'; known: cifar10-cnn, cifar10-resnet, digits-autoencoder, digits-cnn, ",
    ) as exc:
        get_trainable("nope")
    assert all(f"{t.name}," in str(exc.value) or f"{t.name} " in str(exc.value) for t in list_trainables())


def test_duplicate_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register(Trainable(name="digits-cnn", train=lambda c, r: None))


def test_plain_function_by_import_path(user_module):
    trainable = get_trainable(f"{user_module}:train")
    assert trainable.name == f"{user_module}:train" and trainable.metric is None
    reporter = MemoryReporter()
    trainable.train({"epochs": 2, "x": 3}, reporter)
    assert [r["score"] for r in reporter.results] == [3.0, 6.0]


def test_trainable_object_by_import_path(user_module):
    trainable = get_trainable(f"{user_module}:described")
    assert (trainable.name, trainable.metric, trainable.mode) == ("my-pair", "score", "max")


@pytest.mark.parametrize(
    "ref, message",
    [("no_such_module_xyz:train", "cannot import 'no_such_module_xyz'"), ("json:no_such_attr", "has no callable")],
)
def test_bad_import_paths(ref, message):
    with pytest.raises(LookupError, match=message):
        get_trainable(ref)
