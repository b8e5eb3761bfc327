"""Image trainables: a model family (trainables/_families.py) on an image data set (trainables/_datasets.py).

Every pair comes from the public factory a user's own model does (`trainables.from_model`): classification,
segmentation (U-Net) or reconstruction (autoencoder), plus a second stage, a classifier on a
pretrained autoencoder's encoder. The data set is read once per process from `data_root` and held as uint8;
the factory normalises it on the device with the training split's own statistics and serves uint8 images.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ._datasets import ImageData, load_dataset
from ._factory import from_model
from ._families import FAMILIES, EncoderClassifier, build_model
from ._folds import FOLD_KEY
from ._lru import DATA_CONFIGS_KEPT, LRU
from ._registry import Trainable, register

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


_DATA_SETS = LRU(DATA_CONFIGS_KEPT)  # the data sets this process read last (a worker's later trials reuse them)


def _load(name: str, root: str | None, split_seed: int, image_size: int, download: bool, limit: int) -> ImageData:
    return _DATA_SETS.get_or_build(
        (name, root, split_seed, image_size, download, limit),
        lambda: load_dataset(
            name, root, split_seed=split_seed, image_size=image_size or None, download=download, limit=limit or None
        ),
    )


def _image_data(dataset: str, config: dict) -> ImageData:
    """The configured data set, read once per process (a Ray worker keeps it for its later trials)."""
    return _load(
        dataset,
        config["data_root"],
        int(config["split_seed"]),
        int(config["image_size"]),
        bool(config["download"]),
        int(config["limit"]),
    )


@dataclasses.dataclass(frozen=True)
class _ImagePair:
    """`family` on `dataset`: the model, data and statistics functions `from_model` takes for one pair.
    `stage2`: a classifier on the encoder of the autoencoder checkpoint in config["encoder_checkpoint"]
    (pretrain an autoencoder on the images alone, then classify with its encoder)."""

    dataset: str
    family: str
    stage2: bool = False

    def model(self, config: dict) -> nn.Module:
        data = _image_data(self.dataset, config)
        in_shape = tuple(data.x["train"].shape[1:])
        if self.stage2:
            return _encoder_classifier(config, in_shape, len(data.classes))
        return build_model(self.family, config, in_shape, len(data.classes))

    def splits(self, config: dict):
        data = _image_data(self.dataset, config)
        return (
            (data.x["train"], data.y["train"]),
            (data.x["val"], data.y["val"]),
            lambda: (data.x["test"], data.y["test"]),
        )

    def stats(self, config: dict) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        data = _image_data(self.dataset, config)
        pretrained = self.family == "transfer" and not self.stage2 and config.get("pretrained")
        if pretrained and data.x["train"].shape[1] == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        if FOLD_KEY in config:
            return None  # the factory's, of the fold's training part
        return data.mean, data.std  # the training split's, cached beside the data set


def image_trainable(
    name: str, dataset: str, family: str, description: str, defaults: dict | None = None, stage2: bool = False
) -> Trainable:
    """Register `name`: `family` trained on `dataset`, through the public factory (`trainables.from_model`).
    `stage2`: a classifier on the encoder of the autoencoder checkpoint in config["encoder_checkpoint"]."""
    task = "classification" if stage2 else TASK_OF_FAMILY.get(family, "classification")
    model_hyper = STAGE2_HYPERPARAMETERS if stage2 else FAMILIES[family].hyperparameters
    model_defaults = STAGE2_DEFAULTS if stage2 else FAMILIES[family].defaults
    extra_hyper = RECON_HYPERPARAMETERS if task == "reconstruction" else {}
    all_defaults = {
        **DATA_DEFAULTS,
        **model_defaults,
        **({"recon_loss": "mse"} if extra_hyper else {}),
        **(defaults or {}),
    }
    pair = _ImagePair(dataset, family, stage2)
    trainable = from_model(
        pair.model,
        pair.splits,
        task=task,
        name=name,
        description=description,
        image_stats=pair.stats,
        hyperparameters={**model_hyper, **extra_hyper, **DATA_HYPERPARAMETERS},
        defaults=all_defaults,
    )

    def data_info(config: dict) -> dict[str, Any]:
        data = _image_data(dataset, {**trainable.defaults, **config})
        return {
            "dataset": data.name,
            "fingerprint": data.fingerprint,
            "split_seed": data.split_seed,
            "source": data.source,
        }

    return register(dataclasses.replace(trainable, data_info=data_info))


def _encoder_classifier(config: dict, in_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    path = config.get("encoder_checkpoint")
    if not path:
        raise ValueError("encoder_checkpoint: not set; give the study `encoder_from: STUDY` (or a checkpoint path)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    pretrained = checkpoint["config"]
    autoencoder = build_model("autoencoder", pretrained, in_shape, 0)
    autoencoder.load_state_dict(checkpoint["model"])
    latent = int(pretrained.get("latent", FAMILIES["autoencoder"].defaults["latent"]))
    return EncoderClassifier(
        autoencoder.encoder, latent, n_classes, bool(config["freeze_encoder"]), float(config["dropout"])
    )


# ---- the pairs ----------------------------------------------------------------------------------------------

PAIRS = [
    ("mnist-cnn", "mnist", "cnn", "conv-relu-maxpool blocks + linear head on MNIST"),
    ("mnist-mlp", "mnist", "mlp", "MLP with dropout on MNIST"),
    ("fashion-mnist-mlp", "fashion-mnist", "mlp", "MLP with dropout on FashionMNIST"),
    ("fashion-mnist-cnn", "fashion-mnist", "cnn", "conv-relu-maxpool blocks + linear head on FashionMNIST"),
    ("cifar10-cnn", "cifar10", "cnn", "conv-relu-maxpool blocks + linear head on CIFAR-10"),
    ("cifar10-resnet", "cifar10", "resnet", "a residual ConvNet on CIFAR-10"),
    ("flowers102-resnet", "flowers102", "resnet", "a residual GroupNorm ConvNet on Flowers102"),
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
image_trainable(
    "digits-encoder-classifier",
    "digits",
    "autoencoder",
    "a classifier on a pretrained digits autoencoder's encoder, frozen or fine-tuned",
    stage2=True,
)
