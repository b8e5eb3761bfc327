"""The engine of one sweep: plan it (validate everything, writing nothing), run it, and finish it (the best
checkpoint, its servable model, one test evaluation); plus what the driver knows of each trial, the live
progress, warm starts, `hpsearch check` and `hpsearch stop`.

Its modules are private; `search.api` and the CLI are the public surface."""
