"""Image trainables: a model family (trainables/_models.py) on an image data set (trainables/_datasets.py).

One factory makes every pair: classification, segmentation (U-Net) or reconstruction (autoencoder), plus the
notes' second stage, a classifier on a pretrained autoencoder's encoder. The data set is read once per
process from `data_root`, held as uint8 and normalised with the training split's own statistics.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

from ._check import Setup
from ._datasets import ImageData, load_dataset
from ._loop import (
    AUGMENT_DEFAULTS,
    AUGMENT_HYPERPARAMETERS,
    LOOP_DEFAULTS,
    LOOP_HYPERPARAMETERS,
    Prep,
    Split,
    default_device,
    evaluate,
    fit,
    make_optimizer,
)
from ._models import FAMILIES, EncoderClassifier, build_model
from ._registry import Trainable, register
from ._reporter import Reporter
from ._tasks import DEFAULT_METRIC, loss_fn

# ImageNet's statistics: what torchvision's pretrained weights were trained to see.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

DATA_HYPERPARAMETERS = {
    "data_root": "folder holding the data set in torchvision's layout (set by --data-root or the study's data_root)",
    "download": "fetch the data set into data_root when it is missing (needs a network), true/false",
    "image_size": "images resized to this many pixels a side, where the data set resizes (flowers102, folders)",
    "limit": "use at most this many examples per split; 0 = all (quick trials, tests)",
    "split_seed": "seed of the train/val(/test) splits",
}
DATA_DEFAULTS = {"data_root": None, "download": False, "image_size": 0, "limit": 0, "split_seed": 0}
TASK_OF_FAMILY = {"unet": "segmentation", "autoencoder": "reconstruction"}
RECON_HYPERPARAMETERS = {"recon_loss": "mse | l1: the reconstruction loss"}
STAGE2_HYPERPARAMETERS = {
    "encoder_checkpoint": "the pretrained autoencoder's checkpoint (set from the study's encoder_from)",
    "freeze_encoder": "keep the encoder's weights fixed and train the head only, true/false",
    "dropout": "dropout probability before the linear head, 0..1",
}
STAGE2_DEFAULTS = {"encoder_checkpoint": None, "freeze_encoder": True, "dropout": 0.0}


@functools.cache
def _load(name: str, root: str | None, split_seed: int, image_size: int, download: bool, limit: int) -> ImageData:
    return load_dataset(name, root, split_seed=split_seed, image_size=image_size or None, download=download,
                        limit=limit or None)  # fmt: skip


def _data(dataset: str, config: dict) -> ImageData:
    """The configured data set, read once per process (a Ray worker keeps it for its later trials)."""
    return _load(dataset, config["data_root"], int(config["split_seed"]), int(config["image_size"]),
                 bool(config["download"]), int(config["limit"]))  # fmt: skip


class ImageInput(nn.Module):
    """uint8 images (N, C, H, W) -> the network's normalised floats -> net. What the MLflow model serves."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() / 255 - self.mean) / self.std)


def image_trainable(
    name: str, dataset: str, family: str, description: str, defaults: dict | None = None, stage2: bool = False
) -> Trainable:
    """Register `name`: `family` trained on `dataset`. `stage2`: a classifier on the encoder of the autoencoder
    checkpoint in config["encoder_checkpoint"] (the notes' pretrain-then-classify)."""
    task = "classification" if stage2 else TASK_OF_FAMILY.get(family, "classification")
    model_hyper = STAGE2_HYPERPARAMETERS if stage2 else FAMILIES[family].hyperparameters
    model_defaults = STAGE2_DEFAULTS if stage2 else FAMILIES[family].defaults
    extra_hyper = RECON_HYPERPARAMETERS if task == "reconstruction" else {}
    all_defaults = {**LOOP_DEFAULTS, **AUGMENT_DEFAULTS, **DATA_DEFAULTS, **model_defaults,
                    **({"recon_loss": "mse"} if extra_hyper else {}), **(defaults or {})}  # fmt: skip

    def with_defaults(config: dict) -> dict:
        return {**all_defaults, **config}

    def stats(config: dict, data: ImageData) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if family == "transfer" and not stage2 and config.get("pretrained") and data.x["train"].shape[1] == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        return data.mean, data.std

    def prep(config: dict, data: ImageData) -> Prep:
        mean, std = stats(config, data)
        return Prep(mean, std, bool(config["flip"]), int(config["crop"]), float(config["jitter"]))

    def build(config: dict, data: ImageData) -> nn.Module:
        in_shape = tuple(data.x["train"].shape[1:])
        if stage2:
            return _encoder_classifier(config, in_shape, len(data.classes))
        return build_model(family, config, in_shape, len(data.classes))

    def split(data: ImageData, name: str) -> Split:
        return Split(data.x[name], data.y[name], key=(data.fingerprint, name))

    def train(config: dict, reporter: Reporter) -> None:
        config = with_defaults(config)
        data = _data(dataset, config)
        fit(config, reporter, lambda c: build(c, data), split(data, "train"), split(data, "val"), task=task,
            prep=prep(config, data))  # fmt: skip

    def load(config: dict, model_state: dict, data: ImageData) -> nn.Module:
        model = build(config, data)
        model.load_state_dict(model_state)
        return model.eval()

    def evaluate_split(config: dict, model_state: dict, split_name: str) -> dict[str, float]:
        config = with_defaults(config)
        data, device = _data(dataset, config), default_device()
        model = load(config, model_state, data).to(device)
        result = evaluate(model, split(data, split_name).to(device), task=task, prep=prep(config, data),
                          config=config, per_class=task == "classification")  # fmt: skip
        return {f"{split_name}_{k}": v for k, v in result.items()}

    def export(config: dict, model_state: dict) -> tuple[nn.Module, np.ndarray]:
        config = with_defaults(config)
        data = _data(dataset, config)
        mean, std = stats(config, data)
        return ImageInput(load(config, model_state, data), mean, std).eval(), data.x["val"][:4].numpy().copy()

    def samples(config: dict, split_name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...] | None]:
        data = _data(dataset, with_defaults(config))
        x = data.x[split_name]
        shape = tuple(x.shape[2:]) if x.shape[1] == 1 else None  # the report draws grayscale images only
        return x.numpy(), data.y[split_name].numpy(), shape

    def setup(config: dict) -> Setup:
        config = with_defaults(config)
        data = _data(dataset, config)
        p = prep(config, data)

        def ready(name: str) -> Split:  # normalised floats, the first 2,048 examples: enough for the checks
            x, y, pixels = p(data.x[name][:2048], data.y[name][:2048])
            return Split(x, pixels if task == "reconstruction" else y)

        return Setup(
            model=lambda: build(config, data),
            train=ready("train"),
            val=ready("val"),
            loss=loss_fn(task, config),
            optimizer=lambda params, lr: make_optimizer(params, {**config, "lr": lr}),
            n_classes=len(data.classes) if task == "classification" else None,
        )

    def data_info(config: dict) -> dict[str, Any]:
        data = _data(dataset, with_defaults(config))
        return {"dataset": data.name, "fingerprint": data.fingerprint, "split_seed": data.split_seed,
                "source": data.source}  # fmt: skip

    metric, mode = DEFAULT_METRIC[task]
    return register(
        Trainable(
            name=name,
            train=train,
            metric=metric,
            mode=mode,
            hyperparameters={**LOOP_HYPERPARAMETERS, **AUGMENT_HYPERPARAMETERS, **model_hyper, **extra_hyper,
                             **DATA_HYPERPARAMETERS},  # fmt: skip
            defaults=all_defaults,
            evaluate=evaluate_split,
            export=export,
            data_info=data_info,
            samples=samples if task == "classification" else None,
            setup=setup,
            description=description,
        )
    )


def _encoder_classifier(config: dict, in_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    path = config.get("encoder_checkpoint")
    if not path:
        raise ValueError("encoder_checkpoint: not set; give the study `encoder_from: STUDY` (or a checkpoint path)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    pretrained = checkpoint["config"]
    autoencoder = build_model("autoencoder", pretrained, in_shape, 0)
    autoencoder.load_state_dict(checkpoint["model"])
    latent = int(pretrained.get("latent", FAMILIES["autoencoder"].defaults["latent"]))
    return EncoderClassifier(autoencoder.encoder, latent, n_classes, bool(config["freeze_encoder"]),
                             float(config["dropout"]))  # fmt: skip


# ---- the pairs ----------------------------------------------------------------------------------------------

PAIRS = [
    ("mnist-cnn", "mnist", "cnn", "conv-relu-maxpool blocks + linear head on MNIST"),
    ("mnist-mlp", "mnist", "mlp", "MLP with dropout on MNIST"),
    ("fashion-mnist-mlp", "fashion-mnist", "mlp", "MLP with dropout on FashionMNIST"),
    ("fashion-mnist-cnn", "fashion-mnist", "cnn", "conv-relu-maxpool blocks + linear head on FashionMNIST"),
    ("cifar10-cnn", "cifar10", "cnn", "conv-relu-maxpool blocks + linear head on CIFAR-10"),
    ("cifar10-resnet", "cifar10", "resnet", "the course's residual ConvNet on CIFAR-10"),
    ("flowers102-resnet", "flowers102", "resnet", "the course's residual GroupNorm ConvNet on Flowers102"),
    ("flowers102-transfer", "flowers102", "transfer", "a torchvision backbone with a new head on Flowers102"),
    ("imagefolder-cnn", "imagefolder", "cnn", "a small CNN on your own folder of images (root/class_x/*.png)"),
    ("imagefolder-resnet", "imagefolder", "resnet", "the residual ConvNet on your own folder of images"),
    ("imagefolder-transfer", "imagefolder", "transfer", "a torchvision backbone on your own folder of images"),
    ("shapes-unet", "shapes", "unet", "U-Net segmenting synthetic shapes (circle, square, triangle)"),
    ("segfolder-unet", "segfolder", "unet", "U-Net on your own image/mask pairs (root/images, root/masks)"),
    ("digits-autoencoder", "digits", "autoencoder", "autoencoder pretraining on sklearn digits (reconstruction)"),
    ("mnist-autoencoder", "mnist", "autoencoder", "autoencoder pretraining on MNIST (reconstruction)"),
]
for _name, _dataset, _family, _description in PAIRS:
    image_trainable(_name, _dataset, _family, _description)
image_trainable("digits-encoder-classifier", "digits", "autoencoder",
                "a classifier on a pretrained digits autoencoder's encoder, frozen or fine-tuned", stage2=True)  # fmt: skip
