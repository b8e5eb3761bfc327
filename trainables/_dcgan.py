"""A DCGAN (Radford et al., 2015) on scikit-learn's 8x8 digits, through the plain `train(config, reporter)` route.

Two networks, two Adam optimizers and the usual adversarial step: the discriminator learns real (label 1) from
generated (label 0), then the generator learns to have its images called real. Weights start as the DCGAN paper's:
conv and transposed-conv weights normal(0, 0.02), BatchNorm weights normal(1, 0.02) and biases 0.

The metric, `val_fid` (minimised), is the Fréchet distance between real and generated digits in the feature
space of a small digits classifier: a GAN's losses say who is winning, not whether the digits look right. The
classifier is trained once per worker process, on the training split, with a fixed seed (about a second on a
CPU), so every trial and epoch is measured with the same ruler. The checkpoint's "model" is the generator;
`export` serves it: noise (N, latent) float32 in, images (N, 1, 8, 8) out on the raw digits' 0..16 scale, so its
output goes straight into a promoted digits-cnn or digits-mlp model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from studies.words import STOP_DIVERGED, better

from ._device import default_device
from ._digits_pairs import digits_data  # the splits, cached per process
from ._lru import DATA_CONFIGS_KEPT, LRU
from ._registry import Trainable, register
from ._reporter import Reporter

# The feature classifier per split seed, and the real splits' features: kept like the other per-worker data
# (release_caches empties them).
_JUDGES = LRU(DATA_CONFIGS_KEPT)
_FEATURES = LRU(3 * DATA_CONFIGS_KEPT)

PIXEL_MAX = 16.0  # the digits' pixels are 0..16; the networks see them scaled to [-1, 1] (the generator's tanh)
FAKES = 1000  # generated digits per Fréchet distance: about as many as the real splits hold (288 val, 360 test)
EVAL_SEED = 1234  # the noise the distance is measured on: the same for every epoch and trial
SAMPLES = 16  # generated digits the report draws
REPORTED = ("val_fid", "d_loss", "g_loss", "d_real", "d_fake")  # each epoch's metrics: what a study may select on

HYPERPARAMETERS = {
    "lr": "Adam learning rate of both networks (default 1e-3)",
    "beta1": "Adam's first-moment decay of both networks (the DCGAN paper's 0.5: Adam's usual 0.9 oscillates)",
    "beta2": "Adam's second-moment decay of both networks (Adam's usual 0.999)",
    "batch_size": "real digits per adversarial step (as many generated ones)",
    "latent": "size of the generator's noise vector (the DCGAN paper: 100 for 64x64 images; 8x8 digits need fewer)",
    "width": "channels of the generator's and discriminator's widest conv layer",
    "split_seed": "seed of the data splits",
}
DEFAULTS = {
    "lr": 1e-3,
    "beta1": 0.5,
    "beta2": 0.999,
    "batch_size": 64,
    "latent": 32,
    "width": 64,
    "epochs": 30,
    "split_seed": 0,
}


def _with_defaults(config: dict) -> dict:
    return {**DEFAULTS, **config}


def _init(module: nn.Module) -> None:
    """The DCGAN paper's initialisation: conv weights normal(0, 0.02), BatchNorm weights normal(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.constant_(module.bias, 0.0)


def build_generator(config: dict) -> nn.Module:
    """Noise (N, latent, 1, 1) -> images (N, 1, 8, 8) in [-1, 1]: transposed convolutions upsample 1 -> 2 -> 4 -> 8."""
    z, w = int(config["latent"]), int(config["width"])
    net = nn.Sequential(
        nn.ConvTranspose2d(z, w, 2, 1, 0, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(True),  # 1x1 -> 2x2
        nn.ConvTranspose2d(w, w // 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(w // 2),
        nn.ReLU(True),  # -> 4x4
        nn.ConvTranspose2d(w // 2, 1, 4, 2, 1, bias=False),
        nn.Tanh(),  # -> 8x8; no BatchNorm on the image itself
    )
    net.apply(_init)
    return net


def build_discriminator(config: dict) -> nn.Module:
    """Images (N, 1, 8, 8) -> one logit each (real > 0): a binary classifier, strided convolutions 8 -> 4 -> 2 -> 1."""
    w = int(config["width"])
    net = nn.Sequential(
        nn.Conv2d(1, w // 2, 4, 2, 1, bias=False),
        nn.LeakyReLU(0.2, True),  # -> 4x4; no BatchNorm on the input
        nn.Conv2d(w // 2, w, 4, 2, 1, bias=False),
        nn.BatchNorm2d(w),
        nn.LeakyReLU(0.2, True),  # -> 2x2
        nn.Conv2d(w, 1, 2, 1, 0),
        nn.Flatten(),  # -> 1x1: the logit (BCEWithLogits: a stable sigmoid + BCE)
    )
    net.apply(_init)
    return net


def _images(split_seed: int, split: str) -> torch.Tensor:
    """A split's digits as (N, 1, 8, 8) in [-1, 1]."""
    x = digits_data(split_seed).raw[split][0]
    return torch.from_numpy(x).reshape(-1, 1, 8, 8) / (PIXEL_MAX / 2) - 1


# ---- the ruler: a small classifier's features, and the Fréchet distance between two sets of them ------------


def _judge(split_seed: int) -> nn.Module:
    return _JUDGES.get_or_build(split_seed, lambda: _train_judge(split_seed))


def _train_judge(split_seed: int) -> nn.Module:
    """A small CNN trained once per process on the training split (fixed seed, 10 epochs, 97% val accuracy);
    its 64-unit penultimate layer is the feature space. The trial's own random streams are left untouched."""
    x, y = _images(split_seed, "train"), torch.from_numpy(digits_data(split_seed).raw["train"][1])
    # Its own random stream, and gradients on even when first asked for under no_grad (the engine's test evaluation).
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(0)
        features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 2x2
            nn.Flatten(),
            nn.Linear(128, 64),
            nn.ReLU(),
        )
        model = nn.Sequential(features, nn.Linear(64, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(10):
            for rows in torch.randperm(len(y)).split(64):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
                optimizer.step()
    return features.eval().requires_grad_(False)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets (rows are examples).
    Tr((S_a S_b)^(1/2)) is taken from the eigenvalues of the symmetric S_a^(1/2) S_b S_a^(1/2), which are real."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(s_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ s_b @ root_a).clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


def _real_features(split_seed: int, split: str) -> np.ndarray:
    def build() -> np.ndarray:
        with torch.no_grad():
            return _judge(split_seed)(_images(split_seed, split)).numpy()

    return _FEATURES.get_or_build((split_seed, split), build)


def _eval_noise(n: int, latent: int) -> torch.Tensor:
    return torch.randn(n, latent, generator=torch.Generator().manual_seed(EVAL_SEED))


def _fid(generator: nn.Module, config: dict, split: str) -> float:
    split_seed = int(config["split_seed"])
    device = next(generator.parameters()).device
    was_training = generator.training
    with torch.no_grad():
        fakes = generator.eval()(_eval_noise(FAKES, int(config["latent"]))[:, :, None, None].to(device)).cpu()
        value = frechet_distance(_real_features(split_seed, split), _judge(split_seed)(fakes).numpy())
    generator.train(was_training)
    return value


# ---- the trainable and its hooks ---------------------------------------------------------------------------


def train(config: dict, reporter: Reporter) -> None:
    config = _with_defaults(config)
    device = default_device()
    split_seed = int(config["split_seed"])
    real = reporter.cached(("dcgan-real", split_seed, str(device)), lambda: _images(split_seed, "train").to(device))
    _judge(split_seed)  # the ruler: trained by the worker's first trial, reused by the later ones
    batch_size, epochs = int(config["batch_size"]), int(config["epochs"])
    # The study's metric when it is one this trainable reports, else val_fid: what "best" and checkpoints follow.
    metric, mode = (reporter.metric, reporter.mode) if reporter.metric in REPORTED else ("val_fid", "min")

    torch.manual_seed(reporter.seed)
    gan = _Gan.build(config, device)
    progress: dict[str, Any] = {"epoch": 0, "best": None}
    saved = reporter.restore()
    if saved is not None:
        progress = gan.resume(saved)
    steps = max(1, len(real) // batch_size)  # full batches only: BatchNorm on a batch of one is undefined
    for epoch in range(progress["epoch"] + 1, epochs + 1):
        d_mean, g_mean, p_real, p_fake = gan.epoch(real, batch_size, steps, int(config["latent"]))
        if not (math.isfinite(d_mean) and math.isfinite(g_mean)):
            reporter.report(epoch, {"d_loss": d_mean, "g_loss": g_mean}, stop=STOP_DIVERGED)
            return
        # The goal: D(real) and D(fake) both near 0.5, the discriminator unable to tell them apart.
        metrics = {
            "val_fid": _fid(gan.generator, config, "val"),
            "d_loss": d_mean,
            "g_loss": g_mean,
            "d_real": p_real,
            "d_fake": p_fake,
        }
        progress["epoch"] = epoch
        checkpoint = None
        value = metrics[metric]
        if better(value, progress["best"], mode):
            # Only when the best improves: the engine keeps the latest checkpoint as the trial's best.
            progress["best"] = value
            checkpoint = gan.checkpoint(progress, config)
        reporter.report(epoch, metrics, checkpoint=checkpoint)


@dataclasses.dataclass
class _Gan:
    """The two networks and their two Adam optimizers, as one trial trains them."""

    generator: nn.Module
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer

    @classmethod
    def build(cls, config: dict, device: torch.device) -> _Gan:
        betas, lr = (float(config["beta1"]), float(config["beta2"])), float(config["lr"])
        generator, discriminator = build_generator(config).to(device), build_discriminator(config).to(device)
        return cls(
            generator,
            discriminator,
            torch.optim.Adam(generator.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas),
        )

    def resume(self, saved: dict) -> dict[str, Any]:
        """Back to where the checkpoint left off; returns the progress it had."""
        self.generator.load_state_dict(saved["model"])
        self.discriminator.load_state_dict(saved["discriminator"])
        self.opt_g.load_state_dict(saved["opt_g"])
        self.opt_d.load_state_dict(saved["opt_d"])
        torch.set_rng_state(saved["rng"])
        return dict(saved["progress"])

    def checkpoint(self, progress: dict, config: dict) -> dict[str, Any]:
        return {
            "model": self.generator.state_dict(),  # what the engine tests and exports
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": torch.get_rng_state(),
            "progress": dict(progress),
            "config": dict(config),
        }

    def epoch(self, real: torch.Tensor, batch_size: int, steps: int, latent: int) -> list[float]:
        """One pass of adversarial steps over the real digits; the means of d_loss, g_loss, D(real), D(fake)."""
        device = real.device
        self.generator.train(), self.discriminator.train()
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # d_loss, g_loss, D(real), D(fake)
        order = torch.randperm(len(real)).to(device)
        for step in range(steps):
            sums += self._step(real[order[step * batch_size : (step + 1) * batch_size]], latent).double()
        return (sums / steps).tolist()

    def _step(self, x: torch.Tensor, latent: int) -> torch.Tensor:
        """The discriminator's step, then the generator's; their losses and D's mean outputs, on the device."""
        bce = nn.functional.binary_cross_entropy_with_logits
        ones, zeros = torch.ones(len(x), 1, device=x.device), torch.zeros(len(x), 1, device=x.device)
        fake = self.generator(torch.randn(len(x), latent, 1, 1).to(x.device))
        # The discriminator: real digits are 1, generated ones 0 (detached: this step leaves the generator be).
        d_real, d_fake = self.discriminator(x), self.discriminator(fake.detach())
        d_loss = bce(d_real, ones) + bce(d_fake, zeros)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        # The generator: its digits labelled real, judged by the discriminator it just lost to.
        g_loss = bce(self.discriminator(fake), ones)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        return torch.stack(
            [
                d_loss.detach(),
                g_loss.detach(),
                torch.sigmoid(d_real).mean().detach(),
                torch.sigmoid(d_fake).mean().detach(),
            ]
        )


def _load_generator(config: dict, state: dict) -> nn.Module:
    generator = build_generator(config)
    generator.load_state_dict(state)
    return generator.eval()


def evaluate(config: dict, state: dict, split: str) -> dict[str, float]:
    config = _with_defaults(config)
    return {f"{split}_fid": _fid(_load_generator(config, state), config, split)}


class DigitsGenerator(nn.Module):
    """The servable generator: noise (N, latent) -> digits (N, 1, 8, 8) on the raw digits' 0..16 pixel scale."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return (self.generator(noise[:, :, None, None]) + 1) * (PIXEL_MAX / 2)


def export(config: dict, state: dict) -> tuple[nn.Module, np.ndarray]:
    config = _with_defaults(config)
    model = DigitsGenerator(_load_generator(config, state)).eval()
    return model, _eval_noise(4, int(config["latent"])).numpy()


def samples(config: dict, split: str) -> tuple[np.ndarray, None, tuple[int, ...]]:
    """Noise for the report (labels None: a generative model); it draws what the exported generator makes of it."""
    return _eval_noise(SAMPLES, int(_with_defaults(config)["latent"])).numpy(), None, (8, 8)


def data_info(config: dict) -> dict[str, Any]:
    data = digits_data(int(_with_defaults(config)["split_seed"]))
    return {"dataset": "sklearn-digits", "fingerprint": data.fingerprint, "split_seed": data.split_seed}


digits_dcgan = register(
    Trainable(
        name="digits-dcgan",
        train=train,
        metric="val_fid",
        mode="min",
        hyperparameters=HYPERPARAMETERS,
        defaults=DEFAULTS,
        evaluate=evaluate,
        export=export,
        data_info=data_info,
        samples=samples,
        reports=REPORTED,
        # No setup hook: `check`'s one-batch overfit and LR range test need one loss to drive down, and a GAN's
        # two losses fight each other by design.
        description="DCGAN on 8x8 sklearn digits (the DCGAN paper's init, two Adams; val_fid, the Fréchet distance "
        "in a small digits classifier's features)",
    )
)
