"""Where the work runs: data kept on the device, augmentation there, mixed precision, compiled graphs.

The course's loop decodes and normalises every batch on the host and copies it over. Here a data set that fits
moves to the device once per worker process, as uint8, and every batch is gathered, augmented and normalised
there. A compiled model (CUDA graphs) is built once per worker and architecture; later trials copy their fresh
weights into it instead of paying the compilation again.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
from torch import nn

DEVICE_HYPERPARAMETERS = {
    "flip": "random horizontal flip while training, true/false",
    "crop": "random crop after zero-padding by this many pixels while training; 0 = off",
    "jitter": "colour jitter while training: brightness, contrast and saturation scaled by 1 +- jitter; 0 = off",
    "precision": "auto | fp32 | bf16: auto is bf16 autocast on a GPU that supports it, fp32 elsewhere",
    "compile": "auto | on | off: CUDA-graph compilation, auto where the worker's expected training time pays for it",
}
DEVICE_DEFAULTS = {"flip": False, "crop": 0, "jitter": 0.0, "precision": "auto", "compile": "auto"}

# Seconds one compilation costs and what it gains: 18 s and 3.2x over eager for the residual ConvNet at
# batch 256 on an H100 (../shared/gpu/README.md). `auto` compiles only when the saving beats the cost.
COMPILE_COST_S = 20.0
COMPILE_SPEEDUP = 3.0
# A data set larger than this share of free GPU memory stays on the host (pinned) and is copied per batch.
RESIDENT_SHARE = 0.5


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclasses.dataclass(frozen=True)
class Prep:
    """uint8 images (N, C, H, W) -> augmented (training only) and normalised floats, on the images' device.

    Masks (segmentation) get the same flips and crops as their images; colour jitter touches images only.
    Returns the model's input and the pixels on the 0..1 scale (the reconstruction target)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = False
    crop: int = 0
    jitter: float = 0.0

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None, train: bool = False):
        x = x.float().div_(255)
        masks = y is not None and y.dim() == 3
        if train and self.flip:
            flip = torch.rand(len(x), device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            if masks:
                y = torch.where(flip[:, None, None], y.flip(-1), y)
        if train and self.crop:
            x, cropped = _random_crop(x, y if masks else None, self.crop)
            y = cropped if masks else y
        if train and self.jitter:
            x = _jitter(x, self.jitter)
        mean, std = self._stats(x.device)
        return (x - mean) / std, y, x

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as (1, C, 1, 1) tensors on `device`, made once: a copy per batch would sync."""
        key = (self.mean, self.std, str(device))
        if key not in _STATS:
            _STATS[key] = tuple(torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return _STATS[key]


_STATS: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}


def _random_crop(x: torch.Tensor, masks: torch.Tensor | None, pad: int):
    """Each image cropped back to its size at its own random offset after zero padding (the CIFAR recipe)."""
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (n, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None]
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
    if masks is not None:
        masks = nn.functional.pad(masks, (pad, pad, pad, pad))[batch, rows, cols]
    return out, masks


def _jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    n = len(x)

    def factor() -> torch.Tensor:
        return (1 + (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * strength).clamp(min=0)

    x = x * factor()  # brightness
    gray = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - gray) * factor() + gray  # contrast
    if x.shape[1] == 3:
        luma = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - luma) * factor() + luma  # saturation
    return x.clamp_(0, 1)


# ---- data residency --------------------------------------------------------------------------------------

# (data key, device) -> tensor on that device: made once per worker process, shared by its trials.
_RESIDENT: dict[Any, torch.Tensor] = {}


def resident(t: torch.Tensor, device: torch.device, key: Any = None) -> torch.Tensor:
    """`t` on `device`: cached under `key` so later trials in this worker skip the copy. On a GPU without room
    for it (more than RESIDENT_SHARE of free memory) it stays on the host, pinned, and batches are copied."""
    if key is not None and (key, str(device)) in _RESIDENT:
        return _RESIDENT[(key, str(device))]
    if device.type == "cuda" and t.numel() * t.element_size() > RESIDENT_SHARE * torch.cuda.mem_get_info(device)[0]:
        return t.pin_memory()
    moved = t.to(device, non_blocking=True)
    if key is not None:
        _RESIDENT[(key, str(device))] = moved
    return moved


def batch(t: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows `idx` of `t` on `device`, whether `t` lives there or on the host."""
    if t.device.type == device.type:
        return t[idx]
    return t[idx.to(t.device)].to(device, non_blocking=True)


# ---- precision and layout --------------------------------------------------------------------------------


def autocast(config: dict, device: torch.device):
    """bf16 autocast where the config allows it and the GPU has bf16; a no-op context elsewhere."""
    precision = config.get("precision", "auto")
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if device.type == "cuda" and precision != "fp32" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16" and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(device: torch.device, x: torch.Tensor) -> bool:
    """NHWC suits the GPU's convolution kernels (tensor cores); on the CPU it mostly costs a copy."""
    return device.type == "cuda" and x.dim() == 4


# ---- compiled models, once per worker and architecture ---------------------------------------------------

# architecture key -> (the module whose parameters the compiled graph reads, the compiled callable)
_COMPILED: dict[Any, tuple[nn.Module, Any]] = {}


def compile_mode(config: dict) -> str:
    mode = str(config.get("compile", "auto"))
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"compile must be auto, on or off, not {mode!r}")
    return mode


def worth_compiling(epoch_s: float, epochs_left: int, later_trials: int) -> bool:
    """`auto`'s rule on a GPU: compile when eager training still to come in this worker (this trial's remaining
    epochs, and its later trials if they share the architecture) would save more than one compilation costs."""
    eager_s = epoch_s * (epochs_left + later_trials * (epochs_left + 1))
    return eager_s * (1 - 1 / COMPILE_SPEEDUP) > COMPILE_COST_S


def architecture_key(model: nn.Module, device: torch.device, shape: tuple[int, ...], precision: str) -> Any:
    """Everything the compiled graph bakes in: modules and their constants (str), which parameters train,
    the device, the static batch shape and the precision."""
    trains = tuple(p.requires_grad for p in model.parameters())
    return (str(model), trains, str(device), shape, precision)


def is_compiled(key: Any) -> bool:
    return key in _COMPILED


def compiled(model: nn.Module, key: Any) -> tuple[nn.Module, Any, bool]:
    """(module, compiled callable, whether it is new). A cached graph gets `model`'s weights copied into its
    parameters in place (their addresses are what the CUDA graph replays against). A new one compiles lazily,
    on its first calls: the caller warms it up outside its timed epochs."""
    hit = _COMPILED.get(key)
    if hit is not None:
        module, fn = hit
        with torch.no_grad():
            module.load_state_dict(model.state_dict())
        return module, fn, False
    mode = "reduce-overhead" if key[2].startswith("cuda") else "default"
    fn = torch.compile(model, mode=mode, dynamic=False)
    _COMPILED[key] = (model, fn)
    return model, fn, True
