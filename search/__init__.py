"""The engine and the CLI. The only package that imports ray or optuna (lazily: `import search` is cheap).

By concept, each a subpackage with a docstring of what it owns:
- `engine`: one sweep planned, run and finished; what the driver knows of each trial;
- `scheduling`: Ray Tune's side (Ray's start, the Tuner with ASHA, the callback, the trial's reporter);
- `sampling`: Optuna's side (the search space, the sampler behind Tune, the journal);
- `cluster`: where sweeps live (locations, what travels to the nodes, jobs, the lock, `doctor`);
- `review`: the morning after (`promote` and `report`).
The public surface is `search.api` and the CLI (`search.cli`); the subpackages' modules are private.
"""
