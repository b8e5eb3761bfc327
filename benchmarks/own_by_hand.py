"""The README's "Bringing your own model" example written the other way: a plain `train(config, reporter)`
with the hooks by hand, for the same features the factory gives (the loop's optimizer/lr/weight decay/batch
size/clipping/patience hyperparameters, per-epoch validation, checkpoints and `--resume`, early stopping,
divergence, the one test evaluation, a servable model, the report's samples, `hpsearch check`).
What benchmarks/own_lines.py counts against the README's example. It still lacks what the factory adds
beyond these: GPU-resident data, recorded steps, compile, precision, schedules, warmup, label smoothing."""

import math

import torch
from torch import nn

from trainables import STOP_DIVERGED, STOP_EARLY, Setup, Split, Trainable


def model(config):
    c = config["channels"]
    return nn.Sequential(
        nn.Conv1d(1, c, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, 3)
    )


def data(config):
    g = torch.Generator().manual_seed(config.get("split_seed", 0))
    y = torch.randint(0, 3, (1500,), generator=g)
    x = (torch.sin(torch.linspace(0, 6.28, 32) * (y[:, None] + 1)) + 0.5 * torch.randn(1500, 32, generator=g))[:, None]
    return {"train": (x[:1000], y[:1000]), "val": (x[1000:1250], y[1000:1250]), "test": (x[1250:], y[1250:])}


DEFAULTS = {
    "channels": 16,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 64,
    "epochs": 6,
    "patience": 0,
    "clip_grad_norm": 0.0,
    "optimizer": "adamw",
    "split_seed": 0,
}


def optimizer(params, config):
    kind = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[config["optimizer"]]
    return kind(params, lr=config["lr"], weight_decay=config["weight_decay"])


def evaluate_model(net, split):
    x, y = split
    net.eval()
    with torch.no_grad():
        out = net(x)
    return {"loss": nn.functional.cross_entropy(out, y).item(), "accuracy": (out.argmax(1) == y).float().mean().item()}


def train(config, reporter):
    config = {**DEFAULTS, **config}
    splits = reporter.cached(("signals", config["split_seed"]), lambda: data(config))
    torch.manual_seed(reporter.seed)
    net = model(config)
    opt = optimizer(net.parameters(), config)
    start, best, best_epoch = 1, None, 0
    checkpoint = reporter.restore()
    if checkpoint is not None:
        net.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["optimizer"])
        start, best, best_epoch = checkpoint["epoch"] + 1, checkpoint["best"], checkpoint["best_epoch"]
    x, y = splits["train"]
    for epoch in range(start, config["epochs"] + 1):
        net.train()
        total = 0.0
        for rows in torch.randperm(len(x)).split(config["batch_size"]):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[rows]), y[rows])
            loss.backward()
            if config["clip_grad_norm"] > 0:
                nn.utils.clip_grad_norm_(net.parameters(), config["clip_grad_norm"])
            opt.step()
            total += loss.item() * len(rows)
        val = evaluate_model(net, splits["val"])
        metrics = {"train_loss": total / len(x), "val_loss": val["loss"], "val_accuracy": val["accuracy"]}
        if not math.isfinite(metrics["train_loss"]):
            reporter.report(epoch, metrics, stop=STOP_DIVERGED)
            return
        saved = None
        if best is None or val["accuracy"] > best:
            best, best_epoch = val["accuracy"], epoch
            saved = {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "best": best,
                "best_epoch": best_epoch,
            }
        stop = STOP_EARLY if config["patience"] and epoch - best_epoch >= config["patience"] else None
        reporter.report(epoch, metrics, checkpoint=saved, stop=stop)
        if stop:
            return


def load(config, state):
    net = model({**DEFAULTS, **config})
    net.load_state_dict(state)
    return net.eval()


def evaluate(config, state, split):
    result = evaluate_model(load(config, state), data({**DEFAULTS, **config})[split])
    return {f"{split}_{k}": v for k, v in result.items()}


def export(config, state):
    return load(config, state), data({**DEFAULTS, **config})["val"][0][:4].numpy()


def samples(config, split):
    x, y = data({**DEFAULTS, **config})[split]
    return x.numpy(), y.numpy(), None


def setup(config):
    config = {**DEFAULTS, **config}
    splits = data(config)
    return Setup(
        model=lambda: model(config),
        train=Split(*splits["train"]),
        val=Split(*splits["val"]),
        loss=nn.functional.cross_entropy,
        optimizer=lambda params, lr: optimizer(params, {**config, "lr": lr}),
        n_classes=3,
    )


trainable = Trainable(
    name="signals-by-hand",
    train=train,
    metric="val_accuracy",
    mode="max",
    defaults=DEFAULTS,
    hyperparameters={k: k for k in DEFAULTS},
    evaluate=evaluate,
    export=export,
    samples=samples,
    setup=setup,
)
