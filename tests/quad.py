"""A trainable with no training: a noisy-free quadratic whose best is x=0.3, for sweeps that test the
search machinery (samplers, conditions, warm starts) in seconds. Named by import path `tests.quad:train`."""


def train(config, reporter):
    penalty = 0.0 if config.get("optimizer", "adam") == "adam" else 0.1 * (1 - config.get("momentum", 0.0))
    for epoch in range(1, config["epochs"] + 1):
        loss = (config["x"] - 0.3) ** 2 + penalty + config.get("n", 0) * 0.01 + 1.0 / epoch
        reporter.report(epoch, {"loss": loss})
