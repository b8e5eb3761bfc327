"""Where the work runs: data kept on the device, augmentation there, mixed precision, compiled graphs.

A textbook DataLoader loop decodes and normalises every batch on the host and copies it over. Here a data set that
fits moves to the device once per worker process, as uint8, and every batch is gathered, augmented and normalised
there. On a GPU the whole training step (batch gather, augmentation, forward, loss, backward, clipping and the
optimizer's update) is recorded once per trial as one CUDA graph and replayed for every batch: one launch instead of
hundreds. An inductor-compiled model (fused kernels) is built once per worker and architecture; later trials copy
their fresh weights into it instead of paying the compilation again.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
from torch import nn

from ._lru import DATA_CONFIGS_KEPT, LRU

DEVICE_HYPERPARAMETERS = {
    "flip": "random horizontal flip while training, true/false",
    "crop": "random crop after zero-padding by this many pixels while training; 0 = off",
    "jitter": "colour jitter while training: brightness, contrast and saturation scaled by 1 +- jitter; 0 = off",
    "precision": "auto | fp32 | bf16: auto is bf16 autocast on a GPU that supports it, fp32 elsewhere",
    "compile": "auto | graph | on | off: graph records each training step as one CUDA graph (GPU, no compiling); "
    "on adds torch.compile's fused kernels (about 20 s per worker and model); auto is graph, plus compiling where "
    "the worker's expected training time pays for it; off runs every kernel eagerly",
}
DEVICE_DEFAULTS = {"flip": False, "crop": 0, "jitter": 0.0, "precision": "auto", "compile": "auto"}

COMPILE_MODES = ("auto", "graph", "on", "off")
# Seconds one compilation costs, and what a recorded step gains, for the residual ConvNet at batch 256 on an
# H200 (BENCHMARKS.md, 2026-11-26): 17.9-20.9 s of compiling; a whole-step CUDA graph 94k images/s against
# about 35k eager (GRAPH_SPEEDUP, from two runs); inductor's fused kernels inside the graph 216k, 2.3x the
# graph alone (COMPILE_SPEEDUP, one run). `auto` compiles only when the saving beats the cost.
COMPILE_COST_S = 20.0
GRAPH_SPEEDUP = 2.7
COMPILE_SPEEDUP = 2.3
# Optimizers whose update runs as fused CUDA kernels that read the lr from device memory: those a recorded
# step can hold with a schedule still changing the lr. (RMSprop reads its lr on the host.)
GRAPH_OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw")
# Eager steps before a step is recorded: lazy set-up (cuDNN/cuBLAS handles, the optimizer's state, an inductor
# compilation, autotuning) happens in them, not in the recording. They are real training steps.
GRAPH_WARMUP_STEPS = 3
# Data on the GPU, all resident splits together, stays under this share of the memory it could use (free, plus
# what it holds); a split that would pass it alone stays on the host, and `HostBatches` feeds it (workers, pinned).
RESIDENT_SHARE = 0.5
# Compiled models a worker keeps (architecture x batch shape x precision); a sweep that searches them keeps the
# ones it used last. On a GPU their weights also stay under COMPILED_SHARE of the memory they could use.
# (An evicted model's own CUDA graphs, mode reduce-overhead, stay in torch's cudagraph trees: torch bounds those by
# its recompile limit per model class.)
COMPILED_KEPT = 4
COMPILED_SHARE = 0.25


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
        return _STATS.get_or_build(
            key, lambda: tuple(torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        )


_STATS = LRU(16)  # (mean, std, device) -> their (1, C, 1, 1) tensors: a few floats per data configuration


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
        luma = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        x = (x - luma) * factor() + luma  # saturation
    return x.clamp_(0, 1)


# ---- data residency --------------------------------------------------------------------------------------


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _module_bytes(entry: tuple[nn.Module, Any]) -> int:
    return sum(_nbytes(t) for t in (*entry[0].parameters(), *entry[0].buffers()))


def gpu_free(device: torch.device) -> int:
    """Bytes the GPU could still give this process: free on the device, plus what torch's caching allocator
    has reserved but holds no tensor in (an evicted tensor's memory goes there, not back to the device)."""
    return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


# (data key, device) -> tensor on that device: made once per worker process, shared by its trials. Each data
# configuration keeps x and y of its train and val splits.
_RESIDENT = LRU(4 * DATA_CONFIGS_KEPT, _nbytes)


def resident(t: torch.Tensor, device: torch.device, key: Any = None) -> torch.Tensor:
    """`t` on `device`: cached under `key` so later trials in this worker skip the copy. On a GPU, the data kept
    there stays under RESIDENT_SHARE of the memory it could use (the least recently used goes first); a tensor
    that would not fit even alone stays on the host, and `HostBatches` feeds it."""
    if key is not None and (key, str(device)) in _RESIDENT:
        return _RESIDENT[(key, str(device))]
    budget = None
    if device.type == "cuda":
        budget = _RESIDENT.budget(gpu_free(device), RESIDENT_SHARE)
        if _nbytes(t) > budget:
            return t
    moved = t.to(device, non_blocking=True)
    if key is not None:
        _RESIDENT.put((key, str(device)), moved, budget)
    return moved


def on_host(t: torch.Tensor, device: torch.device) -> bool:
    """Whether `t` stayed on the host while training runs on a GPU (by type: `cuda` and `cuda:0` are one)."""
    return t.device.type != device.type


def batch(t: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows `idx` of `t` on `device`, whether `t` lives there or on the host."""
    if not on_host(t, device):
        return t[idx]
    return t[idx.to(t.device)].to(device, non_blocking=True)


class _Rows(torch.utils.data.Dataset):
    """A split's rows, fetched a whole batch at a time (one gather per batch, not one per image)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitems__(self, idx: list[int]):
        rows = torch.as_tensor(idx)
        return self.x[rows], self.y[rows]


def _as_is(rows):
    return rows


class _Batches(torch.utils.data.Sampler):
    """The epoch's batches of indices, set before each epoch (persistent workers keep the same sampler)."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class HostBatches:
    """Batches of a split that stays on the host because the GPU has no room for it: DataLoader workers
    gather each batch's rows (uint8, one gather per batch), the loader pins them and prefetches, and they are
    copied to the device without blocking. Augmentation and normalisation still run on the device."""

    def __init__(
        self,
        x: torch.Tensor | None,
        y: torch.Tensor | None,
        device: torch.device,
        workers: int,
        prefetch: int = 4,
        *,
        dataset: torch.utils.data.Dataset | None = None,
        collate=_as_is,
    ):
        """Rows of (x, y); or, with `dataset`, its items batched by `collate` (a streamed user Dataset)."""
        if dataset is None:
            if x.device.type != "cpu" or y.device.type != "cpu":  # forked workers cannot touch a GPU's memory
                raise ValueError(f"HostBatches feeds a split held on the host, not on {x.device}")
            dataset = _Rows(x, y)
        self.device, self.sampler = device, _Batches()
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=prefetch if workers > 0 else None,
        )

    def epoch(self, order: torch.Tensor, batch_size: int, steps: int):
        """(x, y) on the device for each of the epoch's `steps` batches, in `order`."""
        order = order.tolist()
        self.sampler.batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


# ---- precision and layout --------------------------------------------------------------------------------


def autocast(config: dict, device: torch.device, cache: bool = True):
    """bf16 autocast where the config allows it and the GPU has bf16; a no-op context elsewhere. A recorded
    CUDA graph needs `cache=False`: autocast's cache of cast weights would not outlive the recording."""
    precision = config.get("precision", "auto")
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if device.type == "cuda" and precision != "fp32" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    if precision == "bf16" and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(device: torch.device, x: torch.Tensor) -> bool:
    """NHWC suits the GPU's convolution kernels (tensor cores); on the CPU it mostly costs a copy."""
    return device.type == "cuda" and x.dim() == 4


# ---- the training step as one CUDA graph -----------------------------------------------------------------


class StepGraph:
    """A training step, recorded once as a CUDA graph and replayed for every later batch.

    `step(idx)` does the whole step on the device (gather the rows `idx`, augment, forward, loss, backward,
    clip, the optimizer's update, add the loss to a running sum) without a host sync. The first
    GRAPH_WARMUP_STEPS calls run it eagerly on a side stream; the next one records it, and from then on a call
    copies `idx` into the graph's own index tensor and replays the graph. The graph reads the learning rate from
    a device tensor, refreshed before a replay whenever the optimizer's (float) lr has changed, so schedules
    keep working. If recording fails (an operation a graph cannot hold), the step runs eagerly from then on
    and `failure` says why."""

    def __init__(self, step, optimizer: torch.optim.Optimizer, batch_size: int, device: torch.device):
        self.step, self.optimizer = step, optimizer
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.lrs = [torch.tensor(float(g["lr"]), device=device) for g in optimizer.param_groups]
        self.synced: list[float | None] = [None] * len(self.lrs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failure: str | None = None
        self.calls = 0

    @property
    def recorded(self) -> bool:
        return self.graph is not None

    def __call__(self, idx: torch.Tensor) -> None:
        self.calls += 1
        if self.failure is not None:
            self.step(idx)
        elif self.graph is None and self.calls <= GRAPH_WARMUP_STEPS:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step(idx)
            torch.cuda.current_stream().wait_stream(side)
        elif self.graph is None and not self._record():
            self.step(idx)
        else:
            self.idx.copy_(idx)
            for i, (group, lr) in enumerate(zip(self.optimizer.param_groups, self.lrs)):
                if group["lr"] != self.synced[i]:
                    lr.fill_(group["lr"])
                    self.synced[i] = group["lr"]
            self.graph.replay()

    def _record(self) -> bool:
        groups = self.optimizer.param_groups
        floats = [g["lr"] for g in groups]
        for group, lr in zip(groups, self.lrs):
            lr.fill_(group["lr"])
            group["lr"] = lr  # the update kernels read it from device memory at every replay
        graph = torch.cuda.CUDAGraph()
        try:
            # Gradients start from nothing in the recording: backward then writes them afresh at every replay.
            self.optimizer.zero_grad(set_to_none=True)
            # thread_local: another thread's CUDA call (a checkpoint being written) does not spoil the recording
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.step(self.idx)
            self.graph = graph
        except Exception as e:  # any failure to record means: run eagerly, say why
            self.failure = (f"{type(e).__name__}: {e}".splitlines() or ["unknown"])[0][:300]
            self.optimizer.zero_grad(set_to_none=True)
        finally:
            for group, lr in zip(groups, floats):
                group["lr"] = lr
        self.synced = list(floats)
        return self.graph is not None


# ---- compiled models, once per worker and architecture ---------------------------------------------------

# (architecture key, cudagraphs) -> (the module whose parameters the compiled code reads, the compiled callable)
_COMPILED = LRU(COMPILED_KEPT, _module_bytes)


def compile_mode(config: dict) -> str:
    mode = str(config.get("compile", "auto"))
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, not {mode!r}")
    return mode


def worth_compiling(epoch_s: float, epochs_left: int, later_trials: int, graphed: bool = True) -> bool:
    """`auto`'s rule on a GPU: compile when the training still to come in this worker (this trial's remaining
    epochs, and its later trials if they share the architecture) would save more than one compilation costs.
    `epoch_s` is an eager epoch; a recorded step (`graphed`) runs GRAPH_SPEEDUP times faster already, and
    compiling gains COMPILE_SPEEDUP over that (without a recorded step: over eager, with CUDA graphs of the
    model alone, both together)."""
    to_come = epoch_s * (epochs_left + later_trials * (epochs_left + 1))
    if graphed:
        to_come /= GRAPH_SPEEDUP
        gain = COMPILE_SPEEDUP
    else:
        gain = GRAPH_SPEEDUP * COMPILE_SPEEDUP
    return to_come * (1 - 1 / gain) > COMPILE_COST_S


def architecture_key(model: nn.Module, device: torch.device, shape: tuple[int, ...], precision: str) -> Any:
    """Everything the compiled graph bakes in: modules and their constants (str), which parameters train,
    the device, the static batch shape and the precision."""
    trains = tuple(p.requires_grad for p in model.parameters())
    return (str(model), trains, str(device), shape, precision)


def is_compiled(key: Any, cudagraphs: bool) -> bool:
    return (key, cudagraphs) in _COMPILED


def compiled(model: nn.Module, key: Any, cudagraphs: bool) -> tuple[nn.Module, Any, bool]:
    """(module, compiled callable, whether it is new). `cudagraphs` compiles with CUDA graphs of the model
    (mode reduce-overhead): for a GPU step that is not recorded whole. A cached one gets `model`'s weights
    copied into its parameters in place (their addresses are what the compiled code and any graph run
    against). A new one compiles lazily, on its first calls: the caller warms it up outside its timed epochs."""
    key = (key, cudagraphs)
    hit = _COMPILED.get(key)
    if hit is not None:
        module, fn = hit
        with torch.no_grad():
            module.load_state_dict(model.state_dict())
        return module, fn, False
    fn = torch.compile(model, mode="reduce-overhead" if cudagraphs else "default", dynamic=False)
    device = next(model.parameters(), torch.empty(0)).device
    budget = _COMPILED.budget(gpu_free(device), COMPILED_SHARE) if device.type == "cuda" else None
    _COMPILED.put(key, (model, fn), budget)
    return model, fn, True
