"""The course's model families, each a builder with searchable width and depth.

Every builder is called as `build(config, in_shape, n_out)`: `in_shape` is (C, H, W) of one normalised float
image and the model takes batches (N, C, H, W). Classifiers return (N, n_out) logits, the unet (N, n_out, H, W)
per-pixel logits, the autoencoder a reconstruction shaped like its input. `build_model` merges a family's
defaults under the config (which may hold other keys, such as the loop's `lr`: they are ignored), checks the
values and builds. Builders do not seed: the caller seeds before building.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

NORMS = ("batch", "group", "layer")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
TRANSFER_MIN_SIDE = 32  # smaller inputs are upsampled to this: ImageNet backbones downsample by 32
AE_HIDDEN = 256  # units of the mlp autoencoder's hidden layer on each side; `latent` is the searched width
AE_CHANNELS = (16, 32)  # channels of the conv autoencoder's two stride-2 convs (fixed; `latent` is searched)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    hyperparameters: dict[str, str]  # name -> one line saying what it is (units, allowed values)
    defaults: dict[str, Any]
    build: Callable[[dict, tuple[int, int, int], int], nn.Module]  # build(config, in_shape, n_out)
    description: str


# ---- reading hyperparameters: each error is one line naming the field and what would be valid ------------


def _int(config: dict, key: str, low: int = 1) -> int:
    value = config[key]
    if isinstance(value, float) and value.is_integer():  # JSON and some samplers hand back 64.0
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{key} must be an integer >= {low}, not {value!r}")
    return value


def _fraction(config: dict, key: str) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"{key} must be a number in [0, 1), not {value!r}")
    return float(value)


def _one_of(key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{key} must be {', '.join(choices[:-1])} or {choices[-1]}, not {value!r}")
    return value


def _flag(config: dict, key: str) -> bool:
    value = config[key]
    if isinstance(value, bool):  # not truthiness: the string "false" would be true
        return value
    raise ValueError(f"{key} must be true or false, not {value!r}")


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
    hidden, depth = _int(config, "hidden"), _int(config, "layers", low=0)
    dropout = _fraction(config, "dropout")
    activation = ACTIVATIONS[_one_of("activation", config["activation"], tuple(ACTIVATIONS))]
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(in_shape)
    for _ in range(depth):
        # The notes: dropout before the large fully connected layers (the next hidden one or the head), never
        # on the raw input.
        layers += [nn.Linear(width, hidden), activation(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


# ---- cnn ----------------------------------------------------------------------------------------------


def build_cnn(config: dict, in_shape: tuple[int, int, int], n_out: int) -> nn.Module:
    """A block pools only while the feature map is at least 2x2, so any `blocks` fits an 8x8 digit; the extra
    blocks still add their convolution (and channels) at 1x1."""
    blocks, channels, dropout = _int(config, "blocks"), _int(config, "channels"), _fraction(config, "dropout")
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
    """The course's residual ConvNet: a 1x1 conv head gives per-position logits; their mean over H, W is the
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
        _int(config, "channels_l0"),
        _int(config, "n_blocks", low=0),
        _one_of("norm", config["norm"], NORMS),
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
    depth = _int(config, "depth")
    _check_unet_size(depth, in_shape[1], in_shape[2])
    return UNet(in_shape[0], depth, _int(config, "base_channels"), _one_of("norm", config["norm"], NORMS), n_out)


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
        nn.Conv2d(c, c1, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(flat, latent),
    )  # fmt: skip
    decoder = nn.Sequential(
        nn.Linear(latent, flat), nn.ReLU(), nn.Unflatten(1, (c2, *sizes[2])),
        nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=output_padding(sizes[1], sizes[2])),
        nn.ReLU(),
        nn.ConvTranspose2d(c1, c, 3, stride=2, padding=1, output_padding=output_padding(sizes[0], sizes[1])),
        nn.Sigmoid(),
    )  # fmt: skip
    return Autoencoder(encoder, decoder)


def build_autoencoder(config: dict, in_shape: tuple[int, int, int], n_out: int) -> nn.Module:
    """`n_out` is ignored: the output is the input's own shape."""
    kind, latent = _one_of("kind", config["kind"], ("conv", "mlp")), _int(config, "latent")
    return (_conv_autoencoder if kind == "conv" else _mlp_autoencoder)(in_shape, latent)


class EncoderClassifier(nn.Module):
    """A linear head on a (pretrained) encoder's latent. Frozen, the encoder neither learns nor leaves eval
    mode, so its BatchNorm statistics and dropout stay as they were when it was trained."""

    def __init__(self, encoder: nn.Module, latent: int, n_classes: int, freeze: bool, dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(latent, n_classes))
        self.freeze = freeze
        if freeze:
            encoder.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> EncoderClassifier:
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


# ---- transfer (torchvision) ---------------------------------------------------------------------------

TRANSFER_ARCHS = ("resnet18", "densenet121", "mobilenet_v3_small")
# Old DenseNet checkpoints (torchvision's own included) name layers `norm.1`; today's modules say `norm1`.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


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
    }[_one_of("arch", arch, TRANSFER_ARCHS)]


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


class TransferModel(nn.Module):
    """A torchvision backbone without its ImageNet head, and a new dropout + linear head. Grayscale input is
    repeated to the three channels the backbone expects; inputs under 32 pixels a side are upsampled. Both
    are decided from `in_shape` at build time, so the forward pass has no shape-dependent branches."""

    def __init__(
        self,
        backbone: nn.Module,
        features: int,
        n_out: int,
        dropout: float,
        freeze_backbone: bool,
        in_shape: tuple[int, int, int],
    ):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, n_out))
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            backbone.requires_grad_(False)
        c, h, w = in_shape
        self.gray = c == 1
        self.size = (max(h, TRANSFER_MIN_SIDE), max(w, TRANSFER_MIN_SIDE)) if min(h, w) < TRANSFER_MIN_SIDE else None
        self.train()

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # frozen BatchNorm keeps its running statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gray:
            x = x.expand(-1, 3, -1, -1)
        if self.size is not None:
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.head(self.backbone(x))


def build_transfer(config: dict, in_shape: tuple[int, int, int], n_out: int) -> nn.Module:
    """With `pretrained`, weights come from `weights_path` or else the torch hub cache, never from the network;
    without it, `weights_path` is ignored."""
    arch = _one_of("arch", config["arch"], TRANSFER_ARCHS)
    pretrained, freeze = _flag(config, "pretrained"), _flag(config, "freeze_backbone")
    dropout, weights_path = _fraction(config, "dropout"), config["weights_path"]
    if weights_path is not None and not isinstance(weights_path, str):
        raise ValueError(f"weights_path must be the path of a .pth state_dict file or null, not {weights_path!r}")
    if in_shape[0] not in (1, 3):
        raise ValueError(f"transfer models take 1 (grayscale) or 3 (RGB) input channels, got {in_shape[0]}")
    path = _weights_file(arch, weights_path) if pretrained else None
    net = _torchvision_arch(arch)[0]()
    if path is not None:
        _load_pretrained(net, arch, path)
    return TransferModel(net, _strip_head(arch, net), n_out, dropout, freeze, in_shape)


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
                "dropout": 0.2,  # the notes' usual start for fully connected layers
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
