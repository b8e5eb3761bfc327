"""Optuna's side of a sweep: the study's search space as Optuna's distributions, the sampler behind Ray Tune
(told how each trial ended, pruned trials ranked by their best value), and where the study's journal lives.

Its modules are private; `search.api` and the CLI are the public surface."""
