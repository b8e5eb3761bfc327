"""Transfer learning: a new dropout + linear head on a body trained elsewhere, and the transfer family's torchvision
ImageNet backbones, whose pretrained weights come from a local file or the torch hub cache, never the network."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable
from typing import Self

import torch
from torch import nn

from ._hyperparameters import flag, fraction, one_of

TRANSFER_MIN_SIDE = 32  # smaller inputs are upsampled to this: ImageNet backbones downsample by 32
TRANSFER_ARCHS = ("resnet18", "densenet121", "mobilenet_v3_small")
# Old DenseNet checkpoints (torchvision's own included) name layers `norm.1`; today's modules say `norm1`.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class NewHead(nn.Module):
    """A dropout + linear head on a (pretrained) body's features. Frozen, the body neither learns nor leaves eval
    mode, so its BatchNorm statistics and dropout stay as they were when it was trained."""

    # The attribute that holds the body, named by each subclass: it prefixes the body's keys in the state_dict, and
    # so in the checkpoints already written.
    body_name = "body"

    def __init__(self, body: nn.Module, features: int, n_out: int, dropout: float, freeze: bool):
        super().__init__()
        setattr(self, self.body_name, body)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, n_out))
        self.freeze = freeze
        if freeze:
            body.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        if self.freeze:
            getattr(self, self.body_name).eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(getattr(self, self.body_name)(x))


class PretrainedWeightsMissing(FileNotFoundError):
    """Pretrained weights were asked for but are not on disk; nothing is ever downloaded."""


def _torchvision_arch(arch: str) -> tuple[Callable[[], nn.Module], str]:
    """The architecture's constructor and the URL of its ImageNet weights. torchvision is imported here, not
    at the top: it adds seconds to every import of this module, and only the transfer family needs it."""
    from torchvision import models

    return {
        "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1.url),
        "densenet121": (models.densenet121, models.DenseNet121_Weights.IMAGENET1K_V1.url),
        "mobilenet_v3_small": (models.mobilenet_v3_small, models.MobileNet_V3_Small_Weights.IMAGENET1K_V1.url),
    }[one_of("arch", arch, TRANSFER_ARCHS)]


def pretrained_weights_file(arch: str) -> pathlib.Path:
    """Where torchvision's own download would have put the weights: the torch hub cache."""
    return pathlib.Path(torch.hub.get_dir()) / "checkpoints" / pathlib.PurePosixPath(_torchvision_arch(arch)[1]).name


def _weights_file(arch: str, weights_path: str | None) -> pathlib.Path:
    """The file pretrained weights come from; checked before the (slow) build of the architecture."""
    path = pathlib.Path(weights_path) if weights_path else pretrained_weights_file(arch)
    if path.is_file():
        return path
    if weights_path:
        raise PretrainedWeightsMissing(
            f"pretrained {arch} weights: weights_path {path} does not exist "
            "(or set pretrained: false to train from scratch)"
        )
    raise PretrainedWeightsMissing(
        f"pretrained {arch} weights are not in the torch hub cache and nothing is downloaded here: fetch "
        f"{_torchvision_arch(arch)[1]} to {path} (or set weights_path to a local copy, or pretrained: false to "
        "train from scratch)"
    )


def _load_pretrained(net: nn.Module, arch: str, path: pathlib.Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if arch == "densenet121":
        state = {_OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"{path} does not hold torchvision {arch} weights: {' '.join(str(exc).split())[:300]}"
        ) from None


def _strip_head(arch: str, net: nn.Module) -> int:
    """Remove the ImageNet classifier in place; returns the width of the features it took."""
    if arch == "resnet18":
        features, net.fc = net.fc.in_features, nn.Identity()
    elif arch == "densenet121":
        features, net.classifier = net.classifier.in_features, nn.Identity()
    else:  # mobilenet_v3_small: keep its Linear(576, 1024) + Hardswish; our head brings its own dropout
        features, net.classifier = net.classifier[3].in_features, net.classifier[:2]
    return features


class TransferModel(NewHead):
    """A torchvision backbone without its ImageNet head, and a new dropout + linear head. Grayscale input is
    repeated to the three channels the backbone expects; inputs under 32 pixels a side are upsampled. Both
    are decided from `in_shape` at build time, so the forward pass has no shape-dependent branches."""

    body_name = "backbone"

    def __init__(
        self,
        backbone: nn.Module,
        features: int,
        n_out: int,
        dropout: float,
        freeze_backbone: bool,
        in_shape: tuple[int, int, int],
    ):
        super().__init__(backbone, features, n_out, dropout, freeze_backbone)
        c, h, w = in_shape
        self.gray = c == 1
        self.size = (max(h, TRANSFER_MIN_SIDE), max(w, TRANSFER_MIN_SIDE)) if min(h, w) < TRANSFER_MIN_SIDE else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gray:
            x = x.expand(-1, 3, -1, -1)
        if self.size is not None:
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return super().forward(x)


def build_transfer(config: dict, in_shape: tuple[int, int, int], n_out: int) -> nn.Module:
    """With `pretrained`, weights come from `weights_path` or else the torch hub cache, never from the network;
    without it, `weights_path` is ignored."""
    arch = one_of("arch", config["arch"], TRANSFER_ARCHS)
    pretrained, freeze = flag(config, "pretrained"), flag(config, "freeze_backbone")
    dropout, weights_path = fraction(config, "dropout"), config["weights_path"]
    if weights_path is not None and not isinstance(weights_path, str):
        raise ValueError(f"weights_path must be the path of a .pth state_dict file or null, not {weights_path!r}")
    if in_shape[0] not in (1, 3):
        raise ValueError(f"transfer models take 1 (grayscale) or 3 (RGB) input channels, got {in_shape[0]}")
    path = _weights_file(arch, weights_path) if pretrained else None
    net = _torchvision_arch(arch)[0]()
    if path is not None:
        _load_pretrained(net, arch, path)
    return TransferModel(net, _strip_head(arch, net), n_out, dropout, freeze, in_shape)
