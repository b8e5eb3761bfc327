"""P1 (issue 4): hpsearch's training loop against the course's DataLoader loop, same model, batch size and card.

Both train the course's residual ConvNet (benchmarks/synth.py: about 1.2M parameters) on the same synthetic
32x32x3 uint8 images with the same augmentation (random flip, random crop after 4-pixel padding) and
normalisation, with Adam:
- the course's loop: a Dataset that converts and augments each image on the host, a DataLoader with workers
  and pinned memory, fp32, `.item()` on every step's loss;
- hpsearch's: `trainables._loop.fit` (data resident on the device as uint8, augmentation there, bf16 autocast,
  channels_last, fused Adam, no per-step sync; on a GPU each step one CUDA graph replay, and compiled, per
  --compile).
Steady-state images/s is the median over epochs after the first. One line per batch size and compile mode;
the ratio of the default (`auto`, the first batch size) is printed last.

    python benchmarks/p1_throughput.py                                  # on a GPU: 20,000 images, batch 256
    python benchmarks/p1_throughput.py --batch 256,512 --compile off,graph,on,auto
    python benchmarks/p1_throughput.py --n 2000 --batch 64              # a small CPU run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.synth import images, model
from trainables import MemoryReporter
from trainables._loop import default_device

MEAN, STD = 0.5, 0.25


class CourseDataset(torch.utils.data.Dataset):
    """What the notes write: one image at a time, to float, flip/crop/normalise on the host."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = self.x[i].float() / 255
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        padded = nn.functional.pad(img, (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,)).tolist()
        img = padded[:, dy : dy + 32, dx : dx + 32]
        return (img - MEAN) / STD, self.y[i]


def course_loop(x, y, batch: int, epochs: int, workers: int, device) -> list[float]:
    torch.manual_seed(0)
    net = model({}).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        CourseDataset(x, y),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
    )
    return [course_epoch(net, optimizer, loader, device)[0] for _ in range(epochs)]


def course_epoch(net, optimizer, loader, device) -> tuple[float, float]:
    """One training epoch as the course notes write it (every batch copied to the device, the running loss
    read with .item(), a host sync every step): (images/s, mean training loss). Shared by P1, P1-own and
    P3-sweep."""
    net.train()
    started, seen, total = time.perf_counter(), 0, 0.0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.item()  # the notes' running loss: a host sync every step
        seen += len(yb)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started), total / max(1, len(loader))


def hpsearch_loop(n: int, batch: int, epochs: int, compile_mode: str) -> tuple[list[float], float, str]:
    """(images/s per epoch, seconds compiling, how the step ran)."""
    from benchmarks import synth
    from trainables import _device

    _device._COMPILED.clear()  # each mode from scratch: `auto` must not find the model `on` compiled
    reporter = MemoryReporter(metric="val_accuracy", mode="max")
    reporter.trials_per_worker = 8  # as in a sweep of 8 trials per worker: what `auto` amortises over
    synth.train({"n_train": n, "batch_size": batch, "epochs": epochs, "compile": compile_mode, "lr": 1e-3}, reporter)
    first = reporter.results[0]
    how = "one CUDA graph per step" if first.get("step_graph") else "eager steps"
    compile_s = sum(r.get("compile_s", 0.0) for r in reporter.results)
    return [r["samples_per_s"] for r in reporter.results], compile_s, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="training images")
    parser.add_argument("--batch", default="256", help="batch sizes, comma-separated")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4, help="the course loop's DataLoader workers")
    parser.add_argument(
        "--compile", default="auto", help="hpsearch's compile modes, comma-separated: auto, graph, on, off"
    )
    args = parser.parse_args()
    batches, modes = [int(b) for b in args.batch.split(",")], args.compile.split(",")
    device = default_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    params = sum(p.numel() for p in model({}).parameters())
    print(f"device: {name}; model: residual ConvNet, {params / 1e6:.2f}M parameters; {args.n} images", flush=True)
    x, y = images(args.n + 2_000)
    lines = []
    for batch in batches:
        course = course_loop(x[: args.n], y[: args.n], batch, args.epochs, args.workers, device)
        c = statistics.median(course[1:])
        print(
            f"batch {batch}, course DataLoader loop: {', '.join(f'{r:,.0f}' for r in course)} images/s per epoch",
            flush=True,
        )
        for mode in modes:
            ours, compile_s, how = hpsearch_loop(args.n, batch, args.epochs, mode)
            o = statistics.median(ours[1:])
            print(
                f"batch {batch}, hpsearch loop (compile {mode}: {how}, {compile_s:.1f} s compiling, not in "
                f"these rates): {', '.join(f'{r:,.0f}' for r in ours)} images/s per epoch",
                flush=True,
            )
            lines.append(
                (
                    mode == "auto" and batch == batches[0],
                    f"P1 (batch {batch}, compile {mode}): {o:,.0f} / {c:,.0f} images/s = {o / c:.2f}x",
                )
            )
    for _, line in sorted(lines, key=lambda item: item[0]):  # the default's line last
        print(f"{line} (target >= 4x)")


if __name__ == "__main__":
    main()
