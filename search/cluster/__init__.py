"""Where a team's sweeps live and how they get there: the locations (Ray cluster, MLflow store, shared
storage), what travels to the nodes, submitted jobs, the per-study lock, and `hpsearch doctor`.

Its modules are private; `search.api` and the CLI are the public surface."""
