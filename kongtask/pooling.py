"""Refuse, in one clear line, prepared statements through a transaction-pooling proxy.

asyncpg prepares every statement under a name of its own
(``__asyncpg_stmt_N__``) in the server session of its connection. A PgBouncer
in transaction (or statement) pooling hands that server session to another
client after each transaction, so a pool with prepared statements on meets
"prepared statement ... does not exist" and "prepared statement ... already
exists" mid-run, on some statements, at random. The cure is
``--no-prepared-statements``; this module tells the user so, at start-up when
it can and at the first failing fetch otherwise.

At start-up, one round trip tells a direct connection from one through a proxy
(:func:`behind_proxy`): a pooler cannot give its clients the key of a backend
it will not keep, so the backend serving a statement differs from the one
named at login. Only behind a proxy does the probe run
(:func:`shares_sessions`), testing the failure itself rather than guessing
from version strings or ``SHOW`` (a pooler forwards ``SHOW`` to the server): a
statement prepared under a fresh name on one new connection, and a second new
connection asked whether its server session holds that name. Session pooling
gives each client a session of its own: no. Transaction pooling that passes
the name through gives the second client the first one's session (PgBouncer
hands out the session released last): yes, or the second client's own
statement clashes there, which is proof too. A PgBouncer 1.21+ that tracks
prepared statements (``max_prepared_statements``) renames them on the server,
so the probe finds nothing and prepared statements stay on, as they may (not
tested here: Debian 12 ships 1.18). A pooler that hands out another session
makes the probe miss; then the first failing fetch says the same line
(:func:`is_pooler_error`).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

import asyncpg

from .queries import pooling as sql

#: The exit code of ``kongtask run`` stopped by this: a configuration error, as
#: every bad-input exit of the CLI (``kongtask.cli.EXIT_USAGE``).
EXIT_CODE = 2
#: The advice every message about this ends with.
ADVICE = (
    "run with --no-prepared-statements (prepared_statements=False), and give a direct "
    "--listen-dsn for LISTEN"
)
#: Looks from the second connection: another client of the pooler may hold
#: the session with the probe statement at that moment; a second or third look
#: then finds it free. Each look is one round trip (two the first time).
PROBES = 3
#: What asyncpg raises when a prepared statement met another client's session.
POOLER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InvalidSQLStatementNameError,  # prepared statement "..." does not exist
    asyncpg.DuplicatePreparedStatementError,  # prepared statement "..." already exists
)


def is_pooler_error(error: BaseException | None) -> bool:
    """Whether ``error`` is a prepared statement lost to (or clashing in) a shared session."""
    return isinstance(error, POOLER_ERRORS)


def mid_run_message(error: BaseException) -> str:
    """The one line for a pooler error met outside the probe (during start-up or a
    fetch); asyncpg's own hint is many lines."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return (
        f"{first}: the connection goes through a pooler in transaction pooling "
        f"(PgBouncer?) that shares server sessions between clients; {ADVICE}"
    )


async def behind_proxy(conn: asyncpg.Connection) -> bool:
    """Whether something stands between ``conn`` and PostgreSQL: the backend that runs
    a statement is not the one named at login. One round trip; the probe
    (:func:`sees_prepared`, two more connections) runs only when this is true.

    A pooler cannot tell a client the key of a backend it will not keep, so
    PgBouncer makes one up (tried: 1751377343 at login, backend 24562); a direct
    connection is told its own backend's pid.
    """
    return pid_differs(await conn.fetchval(sql.BACKEND_PID), conn)


def pid_differs(backend_pid: int, conn: asyncpg.Connection) -> bool:
    """:func:`behind_proxy` for a backend pid read by another statement on ``conn``
    (the start-up statement reads it, saving the probe its round trips)."""
    return backend_pid != conn.get_server_pid()


async def shares_sessions(connect: Callable[[], Awaitable[asyncpg.Connection]]) -> bool:
    """Whether a statement prepared on one connection made by ``connect`` is visible,
    under its own name, in the server session of a second one: the sign of
    transaction pooling that will lose prepared statements.

    The first connection prepares, then runs a simple query: PgBouncer 1.18
    keeps a client's server until a statement of the simple protocol ends
    (tried: without it the second client never saw the first one's session).
    The second connects only then, so no fresh server session is released in
    between, and its first statement goes to the session released last.
    """
    first = await connect()
    try:
        return await _looks(first, connect)
    finally:
        await first.close()


async def _looks(
    first: asyncpg.Connection, connect: Callable[[], Awaitable[asyncpg.Connection]]
) -> bool:
    name = f"kongtask_pooling_probe_{secrets.token_hex(6)}"
    # Kept referenced while looking: asyncpg closes an unreferenced statement
    # with its connection's next query.
    statement = await first.prepare(sql.PROBE, name=name)
    try:
        await first.execute(sql.PROBE)
        second = await connect()
        try:
            for _ in range(PROBES):
                try:
                    if await second.fetchval(sql.PREPARED_HERE, name):
                        return True
                except POOLER_ERRORS:
                    return True  # its own statement crossed sessions: sharing too
            return False
        finally:
            await second.close()
    finally:
        del statement


def problem_line() -> str:
    """What ``kongtask run`` says (and exits 2 with) when :func:`sees_prepared` is true."""
    return (
        "the database connection goes through a pooler in transaction pooling "
        "(PgBouncer?): a statement prepared on one connection showed up in another "
        f"client's session, so prepared statements would fail at random; {ADVICE}"
    )
