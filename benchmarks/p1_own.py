"""P1-own: `trainables.from_model`'s loop against the plain eager loop a user would write, for the same user
model (the README's 1-D CNN) and batch size. Prints training examples per second (validation excluded) for
each, the median of `--epochs` epochs after one warm-up epoch, both on the same data, interleaved per round
so that a shared machine's load falls on both alike.

    python benchmarks/p1_own.py                      # CPU: batch 64
    python benchmarks/p1_own.py --batch-size 256     # on a GPU, where the factory keeps the data resident
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.p1_throughput import course_epoch
from trainables import MemoryReporter, from_model
from trainables._loop import default_device


def model(config):  # the README's example
    c = config["channels"]
    return nn.Sequential(
        nn.Conv1d(1, c, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, 3)
    )


def signals(n: int):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    x = (torch.sin(torch.linspace(0, 6.28, 32) * (y[:, None] + 1)) + 0.5 * torch.randn(n, 32, generator=g))[:, None]
    return x, y


def plain_loop(x, y, config, epochs: int, device) -> list[float]:
    """What a user writes: a DataLoader over a TensorDataset, the course's step, a .item() for the log."""
    torch.manual_seed(0)
    net = model(config).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config["lr"])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=config["batch_size"],
        shuffle=True,
        pin_memory=device.type == "cuda",
    )
    return [course_epoch(net, optimizer, loader, device)[0] for _ in range(epochs)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=20000, help="training examples")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per round, after one warm-up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", default="auto", help="the factory's compile hyperparameter")
    args = parser.parse_args()
    device = default_device()
    x, y = signals(args.examples + 2000)
    train, val, test = (
        (x[: args.examples], y[: args.examples]),
        (x[-2000:-1000], y[-2000:-1000]),
        (x[-1000:], y[-1000:]),
    )
    trainable = from_model(model, lambda c: (train, val, test), name="p1-own")
    config = {
        "channels": 16,
        "lr": 3e-3,
        "batch_size": args.batch_size,
        "epochs": args.epochs + 1,
        "compile": args.compile,
    }
    ours, theirs = [], []
    for _ in range(args.rounds):
        reporter = MemoryReporter(seed=0)
        trainable.train(config, reporter)
        ours += [r["samples_per_s"] for r in reporter.results[1:]]
        theirs += plain_loop(*train, config, args.epochs + 1, device)[1:]
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.examples} examples")
    print(f"from_model loop: {a:,.0f} examples/s   plain eager loop: {b:,.0f} examples/s   ratio {a / b:.2f}x")


if __name__ == "__main__":
    main()
