"""The model families with no trainer: shapes, gradients, one-batch overfitting, freezing, pretrained weights."""

import re

import pytest
import torch
import torchvision
from torch import nn

from trainables._families import (
    FAMILIES,
    EncoderClassifier,
    PretrainedWeightsMissing,
    build_model,
    pretrained_weights_file,
)

# Widths small enough that each test takes a second or two on one CPU core.
SMALL = {
    "mlp": {"hidden": 32},
    "cnn": {"channels": 8},
    "resnet": {"channels_l0": 8, "n_blocks": 2},
    "unet": {"depth": 2, "base_channels": 4},
    "autoencoder": {"latent": 8},
    "transfer": {"pretrained": False, "arch": "resnet18"},
}
OVERFIT_STEPS = 300
OVERFIT_TARGET = 0.05  # "near zero": below 0.05 and below 5% of the first step's loss


@pytest.fixture
def hub(tmp_path):
    """An empty torch hub cache, so no test reads (or fills) the real one."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def _id(value) -> str:
    """Readable test ids: 3x32x32 for shapes, k=v,k=v for configs."""
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "small"
    return str(value)


def _steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, steps: int, lr: float) -> list[float]:
    """Adam on one fixed batch, in train mode, stopping once the loss is near zero."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if losses[-1] < OVERFIT_TARGET * min(1.0, losses[0]):
            break
    return losses


def _batch(family: str, in_shape: tuple[int, int, int], n_out: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs and random targets of the family's task: labels, per-pixel masks, or the images."""
    if family == "autoencoder":
        x = torch.rand(n, *in_shape)  # pixels scaled to [0, 1], what the trainer reconstructs
        return x, x
    if family == "unet":
        return torch.randn(n, *in_shape), torch.randint(n_out, (n, *in_shape[1:]))
    return torch.randn(n, *in_shape), torch.randint(n_out, (n,))


def _loss(family: str):
    return nn.functional.mse_loss if family == "autoencoder" else nn.functional.cross_entropy


def test_every_family_has_the_hyperparameters_studies_use():
    names = {name: set(f.hyperparameters) for name, f in FAMILIES.items()}
    assert names == {
        "mlp": {"hidden", "layers", "dropout", "activation"},
        "cnn": {"blocks", "channels", "dropout"},
        "resnet": {"channels_l0", "n_blocks", "norm"},
        "unet": {"depth", "base_channels", "norm"},
        "autoencoder": {"kind", "latent"},
        "transfer": {"arch", "pretrained", "freeze_backbone", "weights_path", "dropout"},
    }
    for name, family in FAMILIES.items():
        assert family.name == name and set(family.defaults) == names[name] and family.description


@pytest.mark.parametrize(
    "family, config, in_shape, out_shape",
    [
        ("mlp", {}, (1, 8, 8), (4, 10)),
        ("mlp", {"layers": 0, "activation": "tanh"}, (3, 32, 32), (4, 10)),
        ("cnn", {}, (1, 8, 8), (4, 10)),
        ("cnn", {"blocks": 5}, (1, 8, 8), (4, 10)),  # more blocks than 8x8 has halvings
        ("cnn", {}, (3, 32, 32), (4, 10)),
        ("resnet", {}, (1, 8, 8), (4, 10)),
        ("resnet", {"norm": "group"}, (3, 32, 32), (4, 10)),
        ("unet", {}, (1, 8, 8), (4, 10, 8, 8)),
        ("unet", {"depth": 3, "norm": "layer"}, (3, 32, 32), (4, 10, 32, 32)),
        ("autoencoder", {"kind": "conv"}, (1, 8, 8), (4, 1, 8, 8)),
        ("autoencoder", {"kind": "conv"}, (1, 7, 9), (4, 1, 7, 9)),  # odd sizes come back exactly
        ("autoencoder", {"kind": "conv"}, (3, 32, 32), (4, 3, 32, 32)),
        ("autoencoder", {"kind": "mlp"}, (3, 32, 32), (4, 3, 32, 32)),
        ("transfer", {}, (1, 8, 8), (4, 10)),  # grayscale, upsampled to 32x32 inside
        ("transfer", {}, (3, 32, 32), (4, 10)),
        ("transfer", {"arch": "mobilenet_v3_small"}, (1, 28, 28), (4, 10)),
        ("transfer", {"arch": "densenet121"}, (3, 8, 8), (4, 10)),
    ],
    ids=_id,
)
def test_forward_and_backward_reach_every_trainable_parameter(family, config, in_shape, out_shape):
    torch.manual_seed(0)
    model = build_model(family, {**SMALL[family], **config}, in_shape, 10).train()
    x, y = _batch(family, in_shape, 10, 4)
    out = model(x)
    assert out.shape == out_shape
    _loss(family)(out, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if family == "autoencoder":
        assert 0 <= out.min() and out.max() <= 1
        assert model.encoder(x).shape == (4, SMALL["autoencoder"]["latent"])
        assert model.decoder(model.encoder(x)).shape == x.shape


@pytest.mark.parametrize(
    "family, config, in_shape, n_out, lr",
    [
        ("mlp", {}, (1, 8, 8), 10, 1e-2),
        ("cnn", {}, (1, 8, 8), 10, 1e-2),
        ("resnet", {}, (3, 8, 8), 10, 1e-2),
        ("unet", {"base_channels": 8}, (1, 8, 8), 3, 1e-2),
        ("autoencoder", {"kind": "conv", "latent": 16}, (1, 8, 8), 0, 1e-2),
        ("autoencoder", {"kind": "mlp", "latent": 16}, (1, 8, 8), 0, 1e-2),
        ("transfer", {}, (1, 8, 8), 10, 1e-3),
    ],
    ids=_id,
)
def test_overfits_one_batch(family, config, in_shape, n_out, lr):
    """The sanity check before a long run: a model that cannot memorise 16 random examples has a bug."""
    torch.manual_seed(0)
    model = build_model(family, {**SMALL[family], **config}, in_shape, n_out)
    x, y = _batch(family, in_shape, n_out, 16)
    losses = _steps(model, x, y, _loss(family), OVERFIT_STEPS, lr)
    assert losses[-1] < OVERFIT_TARGET * min(1.0, losses[0]), f"{losses[0]:.3f} -> {losses[-1]:.4f}"


@pytest.mark.parametrize(
    "norm, norm_type, groups",
    [
        ("batch", nn.BatchNorm2d, None),
        ("group", nn.GroupNorm, [6, 8, 8, 8, 8]),  # 12 channels: 6 groups (8 does not divide 12); 24, 48: 8
        ("layer", nn.GroupNorm, [1, 1, 1, 1, 1]),
    ],
)
def test_resnet_builds_the_norm_it_is_asked_for(norm, norm_type, groups):
    model = build_model("resnet", {"channels_l0": 12, "n_blocks": 2, "norm": norm}, (3, 8, 8), 5)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.GroupNorm)]
    assert len(norms) == 1 + 2 * 2  # after the first conv, and two per residual block
    assert all(type(m) is norm_type for m in norms)
    if groups is not None:
        assert [m.num_groups for m in norms] == groups


def test_unet_refuses_sizes_it_cannot_halve():
    message = "unet depth 3 needs height and width divisible by 8, got 30x30"
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model("unet", {"depth": 3}, (1, 30, 30), 2)
    model = build_model("unet", {"depth": 2}, (1, 8, 8), 2)
    with pytest.raises(ValueError, match=re.escape("unet depth 2 needs height and width divisible by 4, got 8x6")):
        model(torch.randn(1, 1, 8, 6))


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("freeze", [True, False])
def test_transfer_freeze_backbone_trains_only_the_head(arch, freeze):
    torch.manual_seed(0)
    config = {"arch": arch, "pretrained": False, "freeze_backbone": freeze}
    model = build_model("transfer", config, (3, 32, 32), 4)
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # weights and BatchNorm statistics
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    x, y = _batch("transfer", (3, 32, 32), 4, 8)
    _steps(model, x, y, nn.functional.cross_entropy, steps=3, lr=1e-2)
    assert model.training and model.backbone.training is not freeze  # train() keeps a frozen backbone in eval
    changed = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, backbone[k])]
    if freeze:
        assert changed == []
        assert not any(p.requires_grad for p in model.backbone.parameters())
    else:
        assert any("running_mean" in k for k in changed) and any(k.endswith("weight") for k in changed)
    assert all(not torch.equal(v, head[k]) for k, v in model.head.state_dict().items())


@pytest.mark.parametrize(
    "arch, file", [("resnet18", "resnet18-f37072fd.pth"), ("densenet121", "densenet121-a639ec97.pth")]
)
def test_missing_pretrained_weights_say_which_file_to_put_where(hub, arch, file):
    expected = hub / "checkpoints" / file
    assert pretrained_weights_file(arch) == expected
    with pytest.raises(PretrainedWeightsMissing) as info:
        build_model("transfer", {"arch": arch}, (3, 32, 32), 5)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and "\n" not in message
    assert str(expected) in message and f"https://download.pytorch.org/models/{file}" in message
    assert "pretrained: false" in message
    with pytest.raises(PretrainedWeightsMissing, match=re.escape(str(hub / "nope.pth"))):
        build_model("transfer", {"arch": arch, "weights_path": str(hub / "nope.pth")}, (3, 32, 32), 5)


def test_pretrained_weights_in_the_hub_cache_are_loaded(hub):
    torch.manual_seed(0)
    saved = torchvision.models.resnet18()
    pretrained_weights_file("resnet18").parent.mkdir(parents=True)
    torch.save(saved.state_dict(), pretrained_weights_file("resnet18"))
    torch.manual_seed(1)
    model = build_model("transfer", {"arch": "resnet18", "pretrained": True}, (3, 32, 32), 5)
    assert torch.equal(model.backbone.conv1.weight, saved.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, saved.layer4[1].bn2.running_var)
    assert model.head[-1].out_features == 5


def test_weights_path_loads_old_style_densenet_checkpoints(tmp_path):
    """torchvision's own densenet121 file names layers `norm.1`, as written before module names lost dots."""
    torch.manual_seed(0)
    saved = torchvision.models.densenet121().state_dict()
    old_style = {
        re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
        for k, v in saved.items()
        if not k.endswith("num_batches_tracked")  # those files predate it
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old_style
    torch.save(old_style, tmp_path / "densenet.pth")
    config = {"arch": "densenet121", "pretrained": True, "weights_path": str(tmp_path / "densenet.pth")}
    model = build_model("transfer", config, (3, 32, 32), 5)
    key = "features.denseblock4.denselayer16.conv2.weight"
    assert torch.equal(model.backbone.state_dict()[key], saved[key])


@pytest.mark.parametrize("freeze", [True, False])
def test_encoder_classifier_freeze_keeps_the_encoder_as_trained(freeze):
    torch.manual_seed(0)
    autoencoder = build_model("autoencoder", {"kind": "conv", "latent": 8}, (1, 8, 8), 0)
    model = EncoderClassifier(autoencoder.encoder, latent=8, n_classes=10, freeze=freeze, dropout=0.1)
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    x, y = _batch("mlp", (1, 8, 8), 10, 8)
    losses = _steps(model, x, y, nn.functional.cross_entropy, steps=5, lr=1e-2)
    assert model(x).shape == (8, 10) and losses[-1] < losses[0]
    assert model.training and model.encoder.training is not freeze
    unchanged = all(torch.equal(v, encoder[k]) for k, v in model.encoder.state_dict().items())
    assert unchanged is freeze


@pytest.mark.parametrize(
    "family, config, message",
    [
        ("resnet", {"norm": "foo"}, "norm must be batch, group or layer, not 'foo'"),
        ("mlp", {"hidden": 0}, "hidden must be an integer >= 1, not 0"),
        ("mlp", {"layers": 2.5}, "layers must be an integer >= 0, not 2.5"),
        ("mlp", {"activation": "sigmoid"}, "activation must be relu, gelu or tanh, not 'sigmoid'"),
        ("cnn", {"dropout": 1.0}, "dropout must be a number in [0, 1), not 1.0"),
        ("cnn", {"blocks": True}, "blocks must be an integer >= 1, not True"),
        ("unet", {"depth": 0}, "depth must be an integer >= 1, not 0"),
        ("autoencoder", {"kind": "vae"}, "kind must be conv or mlp, not 'vae'"),
        ("transfer", {"arch": "vgg16"}, "arch must be resnet18, densenet121 or mobilenet_v3_small, not 'vgg16'"),
        ("transfer", {"pretrained": "no"}, "pretrained must be true or false, not 'no'"),
        ("transfer", {"pretrained": False, "weights_path": 3}, "weights_path must be the path of a .pth"),
        ("vgg", {}, "unknown model family 'vgg'; known: autoencoder, cnn, mlp, resnet, transfer, unet"),
    ],
)
def test_bad_hyperparameters_fail_with_one_readable_line(family, config, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        build_model(family, config, (1, 8, 8), 10)
    assert "\n" not in str(info.value)


def test_transfer_refuses_channel_counts_it_cannot_map():
    with pytest.raises(ValueError, match=re.escape("1 (grayscale) or 3 (RGB) input channels, got 4")):
        build_model("transfer", {"pretrained": False}, (4, 32, 32), 10)


def test_build_model_ignores_other_keys_and_accepts_integral_floats():
    model = build_model("mlp", {"hidden": 32.0, "lr": 0.1, "epochs": 3}, (1, 8, 8), 10)  # a trial's whole config
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [32, 32, 10]
