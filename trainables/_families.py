"""The built-in model families, each a builder with searchable width and depth.

Every builder is called as `build(config, in_shape, n_out)`: `in_shape` is (C, H, W) of one normalised float
image and the model takes batches (N, C, H, W). Classifiers return (N, n_out) logits, the unet (N, n_out, H, W)
per-pixel logits, the autoencoder a reconstruction shaped like its input. `build_model` merges a family's
defaults under the config (which may hold other keys, such as the loop's `lr`: they are ignored), checks the
values and builds. Builders do not seed: the caller seeds before building.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._hyperparameters import fraction, integer, one_of
from ._transfer import NewHead, PretrainedWeightsMissing, TransferModel, build_transfer, pretrained_weights_file

__all__ = [
    "FAMILIES",
    "EncoderClassifier",
    "Family",
    "PretrainedWeightsMissing",
    "TransferModel",
    "build_model",
    "build_transfer",
    "pretrained_weights_file",
]

NORMS = ("batch", "group", "layer")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
AE_HIDDEN = 256  # units of the mlp autoencoder's hidden layer on each side; `latent` is the searched width
AE_CHANNELS = (16, 32)  # channels of the conv autoencoder's two stride-2 convs (fixed; `latent` is searched)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    hyperparameters: dict[str, str]  # name -> one line saying what it is (units, allowed values)
    defaults: dict[str, Any]
    build: Callable[[dict, tuple[int, int, int], int], nn.Module]  # build(config, in_shape, n_out)
    description: str


# ---- layers the families share ------------------------------------------------------------------------


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # The largest group count up to 8 that divides the channels (GroupNorm needs a divisor).
        return nn.GroupNorm(next(g for g in range(min(8, channels), 0, -1) if channels % g == 0), channels)
    return nn.GroupNorm(1, channels)  # one group: LayerNorm over (C, H, W), independent of the batch


def _conv_norm_relu(c_in: int, c_out: int, norm: str, stride: int = 1) -> list[nn.Module]:
    # No conv bias: the norm's shift right after it would cancel it.
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), _norm(norm, c_out), nn.ReLU()]


# ---- mlp ----------------------------------------------------------------------------------------------


def build_mlp(config: dict, in_shape: tuple[int, int, int], n_out: int) -> nn.Module:
    hidden, depth = integer(config, "hidden"), integer(config, "layers", low=0)
    dropout = fraction(config, "dropout")
    activation = ACTIVATIONS[one_of("activation", config["activation"], tuple(ACTIVATIONS))]
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(in_shape)
    for _ in range(depth):
        # Dropout before the large fully connected layers (the next hidden one or the head), never
        # on the raw input.
        layers += [nn.Linear(width, hidden), activation(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


# ---- cnn ----------------------------------------------------------------------------------------------


def build_cnn(config: dict, in_shape: tuple[int, int, int], n_out: int) -> nn.Module:
    """A block pools only while the feature map is at least 2x2, so any `blocks` fits an 8x8 digit; the extra
    blocks still add their convolution (and channels) at 1x1."""
    blocks, channels, dropout = integer(config, "blocks"), integer(config, "channels"), fraction(config, "dropout")
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers += [nn.Conv2d(c, channels * 2**i, 3, padding=1), nn.ReLU()]
        c = channels * 2**i
        if min(h, w) >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * h * w, n_out)]
    return nn.Sequential(*layers)


# ---- resnet -------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """Two 3x3 convs, the first with stride 2, plus a 1x1 stride-2 conv on the skip path (the size and the
    channels both change in every block, so the skip always needs one)."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__()
        self.main = nn.Sequential(
            *_conv_norm_relu(c_in, c_out, norm, stride=2),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            _norm(norm, c_out),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.main(x) + self.skip(x))


class ResNet(nn.Module):
    """A residual ConvNet: a 1x1 conv head gives per-position logits; their mean over H, W is the
    prediction, so any input size works."""

    def __init__(self, c_in: int, channels_l0: int, n_blocks: int, norm: str, n_out: int):
        super().__init__()
        blocks = [ResidualBlock(channels_l0 * 2**i, channels_l0 * 2 ** (i + 1), norm) for i in range(n_blocks)]
        self.body = nn.Sequential(*_conv_norm_relu(c_in, channels_l0, norm), *blocks)
        self.head = nn.Conv2d(channels_l0 * 2**n_blocks, n_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).mean(dim=(2, 3))


def build_resnet(config: dict, in_shape: tuple[int, int, int], n_out: int) -> nn.Module:
    return ResNet(
        in_shape[0],
        integer(config, "channels_l0"),
        integer(config, "n_blocks", low=0),
        one_of("norm", config["norm"], NORMS),
        n_out,
    )


# ---- unet ---------------------------------------------------------------------------------------------


def _check_unet_size(depth: int, h: int, w: int) -> None:
    if h % 2**depth or w % 2**depth:
        raise ValueError(f"unet depth {depth} needs height and width divisible by {2**depth}, got {h}x{w}")


def _double_conv(c_in: int, c_out: int, norm: str) -> nn.Module:
    return nn.Sequential(*_conv_norm_relu(c_in, c_out, norm), *_conv_norm_relu(c_out, c_out, norm))


class UNet(nn.Module):
    """Encoder levels of two conv-norm-relu, max-pooled between; the decoder upsamples with a stride-2
    transposed conv and concatenates the encoder's map of the same size before its own two convs."""

    def __init__(self, c_in: int, depth: int, base_channels: int, norm: str, n_out: int):
        super().__init__()
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(_double_conv(c, w, norm) for c, w in zip([c_in, *widths[:-1]], widths, strict=True))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth))
        self.merge = nn.ModuleList(_double_conv(2 * widths[i], widths[i], norm) for i in range(depth))
        self.head = nn.Conv2d(base_channels, n_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_unet_size(self.depth, x.shape[-2], x.shape[-1])
        skips = []
        for i, level in enumerate(self.down):
            x = level(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(self.depth)):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)


def build_unet(config: dict, in_shape: tuple[int, int, int], n_out: int) -> nn.Module:
    depth = integer(config, "depth")
    _check_unet_size(depth, in_shape[1], in_shape[2])
    return UNet(in_shape[0], depth, integer(config, "base_channels"), one_of("norm", config["norm"], NORMS), n_out)


# ---- autoencoder --------------------------------------------------------------------------------------


class Autoencoder(nn.Module):
    """`encoder`: image -> (N, latent); `decoder`: (N, latent) -> image in [0, 1] (a Sigmoid last, as the
    trainer compares it with pixels scaled to [0, 1])."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _mlp_autoencoder(in_shape: tuple[int, int, int], latent: int) -> Autoencoder:
    size = math.prod(in_shape)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(size, AE_HIDDEN), nn.ReLU(), nn.Linear(AE_HIDDEN, latent))
    decoder = nn.Sequential(
        nn.Linear(latent, AE_HIDDEN), nn.ReLU(), nn.Linear(AE_HIDDEN, size), nn.Sigmoid(), nn.Unflatten(1, in_shape)
    )
    return Autoencoder(encoder, decoder)


def _conv_autoencoder(in_shape: tuple[int, int, int], latent: int) -> Autoencoder:
    c, h, w = in_shape
    c1, c2 = AE_CHANNELS
    sizes = [(h, w)]
    for _ in AE_CHANNELS:  # a 3x3 stride-2 conv with padding 1 maps n to ceil(n / 2)
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))

    def output_padding(big: tuple[int, int], small: tuple[int, int]) -> tuple[int, int]:
        # The transposed conv gives 2 * small - 1; the padding restores an even size exactly.
        return big[0] - 2 * small[0] + 1, big[1] - 2 * small[1] + 1

    flat = c2 * sizes[2][0] * sizes[2][1]
    encoder = nn.Sequential(
        nn.Conv2d(c, c1, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(flat, latent),
    )
    decoder = nn.Sequential(
        nn.Linear(latent, flat),
        nn.ReLU(),
        nn.Unflatten(1, (c2, *sizes[2])),
        nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=output_padding(sizes[1], sizes[2])),
        nn.ReLU(),
        nn.ConvTranspose2d(c1, c, 3, stride=2, padding=1, output_padding=output_padding(sizes[0], sizes[1])),
        nn.Sigmoid(),
    )
    return Autoencoder(encoder, decoder)


def build_autoencoder(config: dict, in_shape: tuple[int, int, int], n_out: int) -> nn.Module:
    """`n_out` is ignored: the output is the input's own shape."""
    kind, latent = one_of("kind", config["kind"], ("conv", "mlp")), integer(config, "latent")
    return (_conv_autoencoder if kind == "conv" else _mlp_autoencoder)(in_shape, latent)


class EncoderClassifier(NewHead):
    """A linear head on a (pretrained) encoder's latent; a frozen encoder is kept as NewHead says."""

    body_name = "encoder"

    def __init__(self, encoder: nn.Module, latent: int, n_classes: int, freeze: bool, dropout: float = 0.0):
        super().__init__(encoder, latent, n_classes, dropout, freeze)


# ---- the families -------------------------------------------------------------------------------------

_NORM_HELP = "batch | group (GroupNorm, up to 8 groups) | layer (GroupNorm with 1 group: LayerNorm over C, H, W)"

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="mlp",
            hyperparameters={
                "hidden": "units in each hidden layer",
                "layers": "number of hidden layers (0: a linear model)",
                "dropout": "dropout probability before each hidden layer after the first and before the head, [0, 1)",
                "activation": "relu | gelu | tanh",
            },
            defaults={
                "hidden": 128,  # units: plenty for 8x8 digits, seconds per epoch on a CPU
                "layers": 2,
                "dropout": 0.2,  # a usual start for fully connected layers
                "activation": "relu",
            },
            build=build_mlp,
            description="flatten, then hidden fully connected layers with dropout, and a linear head",
        ),
        Family(
            name="cnn",
            hyperparameters={
                "blocks": "conv3x3-relu-maxpool2 blocks (pooling stops once the map is 1 pixel on a side)",
                "channels": "output channels of the first block; each further block doubles them",
                "dropout": "dropout probability before the linear head, [0, 1)",
            },
            defaults={
                "blocks": 2,  # 8x8 -> 2x2, like digits-cnn
                "channels": 16,
                "dropout": 0.2,
            },
            build=build_cnn,
            description="conv-relu-maxpool blocks, then flatten, dropout and a linear head",
        ),
        Family(
            name="resnet",
            hyperparameters={
                "channels_l0": "output channels of the first 3x3 conv; each residual block doubles them",
                "n_blocks": "stride-2 residual blocks (each halves height and width)",
                "norm": _NORM_HELP,
            },
            defaults={
                "channels_l0": 16,  # 16 -> 128 channels over three blocks: ~0.3M parameters
                "n_blocks": 3,  # 8x8 -> 1x1; a 224x224 flower image ends at 28x28
                "norm": "batch",
            },
            build=build_resnet,
            description="residual ConvNet: stride-2 residual blocks, a 1x1 conv head, mean over positions",
        ),
        Family(
            name="unet",
            hyperparameters={
                "depth": "downsamplings (height and width must be divisible by 2**depth)",
                "base_channels": "channels of the top level; each level down doubles them",
                "norm": _NORM_HELP,
            },
            defaults={
                "depth": 2,  # inputs divisible by 4, 8x8 included
                "base_channels": 8,
                "norm": "batch",
            },
            build=build_unet,
            description="U-Net for segmentation: n_out per-pixel class logits (background included)",
        ),
        Family(
            name="autoencoder",
            hyperparameters={
                "kind": "conv (two stride-2 convs each side) | mlp (one hidden layer each side)",
                "latent": "size of the code between encoder and decoder",
            },
            defaults={
                "kind": "conv",
                "latent": 16,  # a quarter of an 8x8 image's pixels
            },
            build=build_autoencoder,
            description="encoder to a latent code and decoder back to the image in [0, 1]; n_out is ignored",
        ),
        Family(
            name="transfer",
            hyperparameters={
                "arch": "resnet18 | densenet121 | mobilenet_v3_small (torchvision)",
                "pretrained": "start from ImageNet weights (true) or a random initialisation (false)",
                "freeze_backbone": "train only the new head (true) or fine-tune everything (false)",
                "weights_path": "a local .pth state_dict of the arch's ImageNet weights; null: the torch hub cache",
                "dropout": "dropout probability before the new linear head, [0, 1)",
            },
            defaults={
                "arch": "resnet18",  # the middle one: mobilenet_v3_small is lighter, densenet121 heavier
                "pretrained": True,
                "freeze_backbone": False,  # fine-tune all; true (the head alone) is cheaper, for tiny data sets
                "weights_path": None,
                "dropout": 0.2,  # as mobilenet_v3's own classifier
            },
            build=build_transfer,
            description="a torchvision ImageNet backbone with a new linear head",
        ),
    )
}


def build_model(family: str, config: dict, in_shape: tuple[int, int, int], n_out: int) -> nn.Module:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    spec = FAMILIES[family]
    return spec.build({**spec.defaults, **config}, tuple(in_shape), n_out)
