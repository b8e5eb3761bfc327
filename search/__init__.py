"""The engine and the CLI. The only package that imports ray or optuna (lazily: `import search` is cheap)."""

__all__ = ["api", "cli"]
