"""Ray Tune's side of a sweep: starting or joining Ray, the Tuner with ASHA, the callback that hands Ray's
hooks to MLflow and the progress display, the reporter a trial talks to inside its worker, and ASHA's rungs
rebuilt on `--resume`.

Its modules are private; `search.api` and the CLI are the public surface."""

# Tune's settings (environment variables) are set when _ray_start is imported: importing it here, before any
# module of this package imports ray, makes that hold whatever imports the package first; Ray's processes
# inherit them. _ray_start itself imports nothing heavy.
from . import _ray_start  # noqa: F401
