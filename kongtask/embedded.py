"""The embedded PostgreSQL: a server from the ``pgserver`` wheel for when no DSN is given.

Only the CLI (a command run with no DSN) and the bench use it, so it lives
apart from :mod:`kongtask.db`, which every worker imports: a worker process
never loads this module (its dataclass alone was a millisecond of start-up).
The data folder is per user and reused across runs.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError


def embedded_data_dir() -> Path:
    """Per-user folder of the embedded server's data, overridable for tests."""
    override = os.environ.get("KONGTASK_EMBEDDED_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "kongtask" / "pgdata"


@dataclass(frozen=True, slots=True)
class EmbeddedServer:
    """The embedded PostgreSQL one command uses, and what a user needs to know about it."""

    dsn: str
    folder: Path
    #: Whether it was running before this process asked for it.
    was_running: bool
    #: Whether it is stopped when this process exits (see :func:`start_embedded`).
    stops_at_exit: bool
    #: The OS user it runs as (``pgserver`` creates ``pgserver`` when run as root).
    os_user: str | None
    #: A shell command that stops it.
    stop_command: str


def _import_pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset
            # (root, containers) and falls back to a fine default: noise to a user.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=UserWarning)
            import pgserver
    except ImportError as exc:
        if sys.version_info >= (3, 13):
            # The extra installs nothing here (pgserver has no wheel for 3.13+):
            # telling the user to install it would send them round in a circle.
            raise ConfigError(
                "no database configured (pass a DSN with -c, set DATABASE_URL or PG* "
                "variables): the embedded server (pgserver) has no build for Python "
                f"{sys.version_info.major}.{sys.version_info.minor}"
            ) from exc
        raise ConfigError(
            "no database configured (pass a DSN, set DATABASE_URL or PG* variables) "
            "and the embedded server is not installed: pip install 'kongtask[embedded]'"
        ) from exc
    return pgserver


def start_embedded(*, stop_at_exit: bool) -> EmbeddedServer:
    """Start (or reuse) the embedded PostgreSQL.

    With ``stop_at_exit``, a server this process started is stopped when it
    exits (one that was already running is left alone: something else uses it).
    Without, it is left running, so the next command reuses it instantly.
    """
    pgserver = _import_pgserver()
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import PostmasterInfo

    folder = embedded_data_dir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    before = PostmasterInfo.read_from_pgdata(folder) if (folder / "PG_VERSION").exists() else None
    was_running = before is not None and before.is_running()
    stops = stop_at_exit and not was_running
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=UserWarning)
        server = pgserver.get_server(folder, cleanup_mode="stop" if stops else None)
    os_user = server.system_user
    stop = f"{POSTGRES_BIN_PATH / 'pg_ctl'} -D {folder} stop"
    if os_user is not None:
        stop = f"su {os_user} -s /bin/sh -c '{stop}'"
    return EmbeddedServer(str(server.get_uri()), folder, was_running, stops, os_user, stop)


def embedded_dsn() -> str:
    """Start (or reuse) the embedded PostgreSQL and return its DSN.

    The server is left running when this process exits, so the next command
    reuses it instantly; ``pgserver`` keeps one server per data folder.
    """
    return start_embedded(stop_at_exit=False).dsn
