"""Connections: where the DSN comes from, how it is shown, and the embedded server.

A DSN is resolved in this order: the explicit argument, ``DATABASE_URL``, the
libpq ``PG*`` variables (asyncpg reads them itself when given no DSN), and at
last, for the CLI and the tests only, an embedded PostgreSQL from the
``pgserver`` wheel kept in a per-user data folder and reused across runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from .errors import ConfigError, SchemaMissing

#: What a lost connection, a server restart or a failed statement raises:
#: the errors a pool's loops survive by retrying (anything else is a bug).
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    ConnectionError,
)
#: The same, and a statement that ran out of its time (``timeout=``).
DB_OR_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, asyncio.TimeoutError)

# libpq variables that, when set, mean "the environment describes a server".
_LIBPQ_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")

_URL_PASSWORD = re.compile(r"(?P<head>://[^:/?#@]*:)(?P<password>[^@/?#]*)(?P<tail>@)")
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|\S+)", re.I)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&#]*)", re.I)


def mask_dsn(dsn: str | None) -> str:
    """The DSN with any password replaced by ``***``, safe for logs and errors."""
    if not dsn:
        return "<libpq environment>" if dsn == "" else "<none>"
    masked = _URL_PASSWORD.sub(r"\g<head>***\g<tail>", dsn)
    masked = _QUERY_PASSWORD.sub(r"\g<head>***", masked)
    return _KV_PASSWORD.sub(r"\g<head>***", masked)


def scrub(text: str, dsn: str | None) -> str:
    """``text`` with the DSN's password removed wherever it appears."""
    if not dsn:
        return text
    for pattern in (_URL_PASSWORD, _QUERY_PASSWORD, _KV_PASSWORD):
        for match in pattern.finditer(dsn):
            secret = match.group("password").strip("'")
            if secret:
                text = text.replace(secret, "***")
    password = os.environ.get("PGPASSWORD")
    if password:
        text = text.replace(password, "***")
    return text


def resolve_dsn(dsn: str | None = None) -> str | None:
    """The DSN to use: argument, ``DATABASE_URL``, ``""`` for libpq variables, else None.

    None means nothing was configured; callers that may (the CLI, the tests)
    then fall back to :func:`embedded_dsn`.
    """
    if dsn:
        return dsn
    env = os.environ.get("DATABASE_URL")
    if env:
        return env
    if any(os.environ.get(name) for name in _LIBPQ_VARS):
        return ""
    return None


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


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL quoted identifier.

    Identifiers cannot be bound as parameters, so this is the one place a
    user-given name becomes SQL text: always double-quoted, inner quotes
    doubled, and names PostgreSQL would silently truncate or reject refused.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError("schema: must be a non-empty string")
    if "\x00" in name:
        raise ConfigError("schema: must not contain NUL characters")
    if len(name.encode()) > 63:
        raise ConfigError(f"schema: {name[:20]!r}... is longer than PostgreSQL's 63-byte limit")
    return '"' + name.replace('"', '""') + '"'


def _bad_dsn(dsn: str | None, exc: Exception) -> ConfigError:
    """A DSN asyncpg cannot parse: bad input (exit 2), not an unreachable server."""
    return ConfigError(f"DSN {mask_dsn(dsn)!r} is not valid: {scrub(str(exc), dsn)}")


def schema_missing(exc: BaseException, schema: str) -> SchemaMissing | None:
    """``exc`` as :class:`SchemaMissing` when it says ``schema`` was never migrated.

    PostgreSQL says ``schema "x" does not exist`` (3F000) for an absent schema,
    and ``relation "x._private_jobs" does not exist`` (42P01) or an unknown
    function (42883) for a schema that exists without kongtask's tables; the
    latter two count only when they name this schema, so an unrelated bug is
    not disguised as a missing migration.
    """
    if not isinstance(exc, asyncpg.PostgresError):
        return None
    if isinstance(exc, asyncpg.InvalidSchemaNameError):
        return SchemaMissing(schema)
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError):
        text = str(exc)
        if f"{schema}." in text or f'"{schema}"' in text:
            return SchemaMissing(schema)
    return None


async def connect(dsn: str | None, **kwargs: Any) -> asyncpg.Connection:
    """One connection, with errors that never show the password."""
    try:
        return await asyncpg.connect(dsn or None, **kwargs)
    except ValueError as exc:  # asyncpg's DSN parser (ClientConfigurationError, a bad port)
        raise _bad_dsn(dsn, exc) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ConnectionError(
            f"cannot connect to {mask_dsn(dsn)}: {scrub(str(exc), dsn)}"
        ) from None


async def create_pool(
    dsn: str | None,
    *,
    min_size: int = 1,
    max_size: int = 10,
    prepared_statements: bool = True,
    **kwargs: Any,
) -> asyncpg.Pool:
    """A pool; ``prepared_statements=False`` is for PgBouncer in transaction mode."""
    if not prepared_statements:
        kwargs.setdefault("statement_cache_size", 0)
    try:
        pool = await asyncpg.create_pool(
            dsn or None, min_size=min_size, max_size=max_size, **kwargs
        )
    except ValueError as exc:  # asyncpg's DSN parser (ClientConfigurationError, a bad port)
        raise _bad_dsn(dsn, exc) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ConnectionError(
            f"cannot connect to {mask_dsn(dsn)}: {scrub(str(exc), dsn)}"
        ) from None
    assert pool is not None
    return pool
