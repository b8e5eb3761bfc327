"""The morning after: `hpsearch promote` (the finalists' retrainings, folds, ensembles, the model registered)
and `hpsearch report` (one HTML page of the study).

Its modules are private; `search.api` and the CLI are the public surface."""
