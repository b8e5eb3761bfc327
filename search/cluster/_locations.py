"""Where a team's sweeps live: the Ray cluster, the MLflow tracking store and the shared storage.

Set once, not on every command. Each location is taken from the first of:
1. the command's flag (`--address`, `--tracking-uri`, `--storage`);
2. the environment (`HPSEARCH_ADDRESS`, `HPSEARCH_TRACKING_URI`, `HPSEARCH_STORAGE`);
3. the config file: `$HPSEARCH_CONFIG`, else `~/.config/hpsearch/config.yaml` where it exists;
4. the embedded default: a local Ray, sqlite and files under the data directory (`$HPSEARCH_HOME`).
The config file may also name the Ray cluster's token file (`ray_token_file:`, see `use_token_file`).

Imports nothing heavy (the error class only when there is an error): `hpsearch run` resolves its Ray address
here before it starts Ray in the background, ahead of its heavy imports.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from urllib.parse import urlparse

CONFIG_ENV = "HPSEARCH_CONFIG"
DEFAULT_CONFIG = "~/.config/hpsearch/config.yaml"
FIELDS = {  # config-file key -> environment variable
    "address": "HPSEARCH_ADDRESS",
    "tracking_uri": "HPSEARCH_TRACKING_URI",
    "storage": "HPSEARCH_STORAGE",
}
# The Ray cluster's token, as a path: the config file may be shared by the team, a token must never be in it.
TOKEN_FIELD = "ray_token_file"
SETTINGS = (*FIELDS, TOKEN_FIELD)


@dataclasses.dataclass(frozen=True)
class Locations:
    address: str | None = None  # a Ray cluster (`ray://`, `HOST:PORT` or `auto`); None: a local Ray
    tracking_uri: str | None = None  # any MLflow tracking URI; None: sqlite under the data directory
    storage: str | None = None  # Ray's experiment storage and the study state; None: the data directory
    origins: tuple = ()  # (field, where it came from) for the fields that are set, for messages

    def origin(self, field: str) -> str:
        return dict(self.origins).get(field, "default")

    def state_root(self, home: Path) -> Path:
        """The folder that holds each study's shared state: the Optuna journal, the lock, stop requests.
        It sits beside Ray's experiments on the shared storage when there is one, so every machine that
        sees the storage sees the same study; the data directory otherwise."""
        if self.storage is None:
            return home
        return storage_path(self.storage, self.origin("storage"))

    def experiments(self, home: Path) -> str:
        """Ray's storage_path: the shared storage, else the data directory's `ray/`."""
        return str(home / "ray") if self.storage is None else str(self.state_root(home))


LOGS_DIR = "hpsearch-logs"  # in the experiment's folder on the storage: TRIAL_ID.log, each trial's stdout and stderr


def trial_log(experiment: str, trial_id: str) -> Path:
    """A trial's output file, in the experiment's folder on the storage, where every machine can read it.
    Here rather than beside the trial function that writes it: `hpsearch logs` reads it without Ray or torch."""
    return Path(experiment) / LOGS_DIR / f"{trial_id}.log"


def storage_path(storage: str, origin: str = "--storage") -> Path:
    """The filesystem path of a storage location (a path or a file:// URI)."""
    from studies import UserError

    parsed = urlparse(storage)
    if parsed.scheme and parsed.scheme != "file" and len(parsed.scheme) > 1:  # not a Windows drive letter
        raise UserError(
            f"{origin}: {storage!r}: the study's shared state (Optuna journal, lock, stop requests) needs a "
            "filesystem path that every machine mounts at the same place (e.g. NFS); "
            f"{parsed.scheme}:// storage is not supported"
        )
    path = Path(parsed.path) if parsed.scheme == "file" else Path(storage).expanduser().absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:  # the folder may not exist yet: its nearest ancestor
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{origin}: {storage!r}: {probe} is not a folder")
    return path


def config_file() -> Path | None:
    """The config file in force: $HPSEARCH_CONFIG (which must exist), else the default where it exists."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        from studies import UserError

        path = Path(named).expanduser()
        if not path.is_file():
            raise UserError(f"{CONFIG_ENV}: {path} is not a file")
        return path
    default = Path(DEFAULT_CONFIG).expanduser()
    return default if default.is_file() else None


def _read_config(path: Path) -> dict[str, str]:
    import yaml

    from studies import UserError

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: cannot read it as YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping of {', '.join(SETTINGS)}")
    unknown = sorted(set(map(str, data)) - set(SETTINGS))
    if unknown:
        raise UserError(f"{path}: {', '.join(unknown)}: not a setting; known: {', '.join(SETTINGS)}")
    out = {}
    for key, value in data.items():
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{path}: {key}: must be a non-empty string (got {value!r})")
        out[key] = value.strip()
    return out


def resolve(address: str | None = None, tracking_uri: str | None = None, storage: str | None = None) -> Locations:
    """The locations in force for one command: flags first, then the environment, then the config file."""
    flags = {"address": address, "tracking_uri": tracking_uri, "storage": storage}
    flag_names = {"address": "--address", "tracking_uri": "--tracking-uri", "storage": "--storage"}
    values: dict[str, str] = {}
    origins: list[tuple[str, str]] = []
    path = config_file()
    config = _read_config(path) if path else {}  # read (and checked) even where flags override it
    for field, env in FIELDS.items():
        if flags[field]:
            values[field], origin = flags[field], flag_names[field]
        elif os.environ.get(env):
            values[field], origin = os.environ[env], env
        elif field in config:
            values[field], origin = config[field], f"{path}: {field}"
        else:
            continue
        origins.append((field, origin))
    return Locations(origins=tuple(origins), **values)


def use_token_file() -> str | None:
    """Where the config file names the Ray cluster's token file (`ray_token_file:`), point Ray at it
    (RAY_AUTH_TOKEN_PATH, with RAY_AUTH_MODE=token), unless this machine's environment already gives a token;
    returns the file in force, if any. A value that is not a file is refused: the token itself does not
    belong in a file the team may share."""
    import re

    from studies import UserError

    path = config_file()
    named = (_read_config(path) if path else {}).get(TOKEN_FIELD)
    if not named or os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ.get("RAY_AUTH_TOKEN_PATH") or None
    token_file = Path(named).expanduser()
    if not token_file.is_file():
        looks = re.fullmatch(r"[0-9a-fA-F]{32,}", named) is not None
        raise UserError(
            f"{path}: {TOKEN_FIELD}: "
            + ("this looks like a token itself; " if looks else f"{token_file} is not a file; ")
            + "give the path of a file holding the head's token (a copy of its ~/.ray/auth_token, chmod 600), "
            "never the token"
        )
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    return str(token_file)
