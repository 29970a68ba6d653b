"""Connections: where the DSN comes from, and how it is shown.

A DSN is resolved in this order: the explicit argument, ``DATABASE_URL``, the
libpq ``PG*`` variables (asyncpg reads them itself when given no DSN), and at
last, for the CLI and the tests only, the embedded PostgreSQL of
:mod:`kongtask.embedded`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

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


@functools.cache
def _password_patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """Where a DSN keeps a password: in the URL's user part, its query, or a
    ``password=`` keyword. Compiled on first use: 0.6 ms of every start,
    otherwise, for a worker that never shows a DSN (its log below INFO)."""
    return (
        re.compile(r"(?P<head>://[^:/?#@]*:)(?P<password>[^@/?#]*)(?P<tail>@)"),
        re.compile(r"(?P<head>[?&]password=)(?P<password>[^&#]*)", re.I),
        re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|\S+)", re.I),
    )


def mask_dsn(dsn: str | None) -> str:
    """The DSN with any password replaced by ``***``, safe for logs and errors."""
    if not dsn:
        return "<libpq environment>" if dsn == "" else "<none>"
    url, query, keyword = _password_patterns()
    masked = url.sub(r"\g<head>***\g<tail>", dsn)
    masked = query.sub(r"\g<head>***", masked)
    return keyword.sub(r"\g<head>***", masked)


def scrub(text: str, dsn: str | None) -> str:
    """``text`` with the DSN's password removed wherever it appears."""
    if not dsn:
        return text
    for pattern in _password_patterns():
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
    then fall back to :func:`kongtask.embedded.embedded_dsn`.
    """
    if dsn:
        return dsn
    env = os.environ.get("DATABASE_URL")
    if env:
        return env
    if any(os.environ.get(name) for name in _LIBPQ_VARS):
        return ""
    return None


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


def _connect_error(dsn: str | None, exc: Exception) -> Exception:
    """Why connecting failed, as the CLI's exit codes tell it: a database the DSN
    names but the server lacks is configuration (ConfigError, exit 2), anything
    else an unreachable database (ConnectionError, exit 3). Never the password."""
    line = f"cannot connect to {mask_dsn(dsn)}: {scrub(str(exc), dsn)}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ConfigError(f"{line} (create it first, e.g. with createdb, or name another)")
    return ConnectionError(line)


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


T = TypeVar("T")

#: Host names whose traffic never leaves the machine.
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
#: Variables by which the environment asks for (or configures) TLS.
_TLS_VARS = (
    "PGSSLMODE",
    "PGSSLNEGOTIATION",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLROOTCERT",
    "PGSERVICE",
    "PGSERVICEFILE",
)
#: Loopback DSNs whose server refused a connection without TLS.
_WANTS_TLS: set[str] = set()
#: How a server refuses a connection for lacking TLS: PostgreSQL's pg_hba.conf
#: (28000, "no pg_hba.conf entry ... no encryption") and PgBouncer's
#: ``client_tls_sslmode = require`` (08P01, "SSL required").
_TLS_REFUSALS = (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.ProtocolViolationError)


def plain_on_loopback(dsn: str | None, kwargs: dict[str, Any]) -> bool:
    """Whether to connect without TLS: a URL DSN whose hosts are all loopback, and
    nothing (DSN, keyword, environment, service file) that says anything about TLS.

    asyncpg, like libpq, defaults to ``sslmode=prefer``: ask for TLS, take plain
    if refused, verify nothing. On loopback that buys nothing (whoever could
    read the traffic could read either process's memory) and costs an OpenSSL
    start-up of about 2 ms in every new process, before its first connection,
    plus an extra exchange per connection (measured: run() -> ready 14.5 ms
    against 12.1 ms). A server that demands TLS (``hostssl`` only) is asked
    again the default way (:func:`connect`, :func:`create_pool`).
    """
    if not dsn or dsn in _WANTS_TLS or "ssl" in kwargs or "direct_tls" in kwargs:
        return False
    if any(os.environ.get(name) for name in _TLS_VARS):
        return False
    try:
        parts = urlsplit(dsn)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return False  # asyncpg reports the DSN itself
    if parts.scheme not in ("postgres", "postgresql"):
        return False
    if any(key.startswith("ssl") or key in ("service", "host", "hostaddr") for key, _ in query):
        return False
    hosts = parts.netloc.rpartition("@")[2].split(",")
    names = [h[1 : h.find("]")] if h.startswith("[") else h.partition(":")[0] for h in hosts]
    return all(name.lower() in _LOOPBACK for name in names)


async def _plain_first(
    dsn: str | None, kwargs: dict[str, Any], open_with: Callable[..., Awaitable[T]]
) -> T:
    """``open_with(dsn, **kwargs)``, without TLS first where :func:`plain_on_loopback`
    allows; a server that refuses that is asked again the default way, and its
    DSN remembered."""
    if plain_on_loopback(dsn, kwargs):
        try:
            return await open_with(dsn, ssl=False, **kwargs)
        except _TLS_REFUSALS:
            _WANTS_TLS.add(str(dsn))
    return await open_with(dsn or None, **kwargs)


async def connect(dsn: str | None, **kwargs: Any) -> asyncpg.Connection:
    """One connection, with errors that never show the password (without TLS on
    loopback unless asked: :func:`plain_on_loopback`)."""
    try:
        return await _plain_first(dsn, kwargs, asyncpg.connect)
    except ValueError as exc:  # asyncpg's DSN parser (ClientConfigurationError, a bad port)
        raise _bad_dsn(dsn, exc) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _connect_error(dsn, exc) from None


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
        if min_size >= 1:
            pool = await _plain_first(
                dsn, dict(kwargs, min_size=min_size, max_size=max_size), asyncpg.create_pool
            )
        else:  # a pool that opens nothing now would meet a refusal past the fallback
            pool = await asyncpg.create_pool(
                dsn or None, min_size=min_size, max_size=max_size, **kwargs
            )
    except ValueError as exc:  # asyncpg's DSN parser (ClientConfigurationError, a bad port)
        raise _bad_dsn(dsn, exc) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _connect_error(dsn, exc) from None
    assert pool is not None
    return pool
