"""Refuse, in one clear line, prepared statements through a transaction-pooling proxy.

asyncpg prepares every statement under a name of its own
(``__asyncpg_stmt_N__``) in the server session of its connection. A PgBouncer
in transaction (or statement) pooling hands that server session to another
client after each transaction, so a pool with prepared statements on meets
"prepared statement ... does not exist" and "prepared statement ... already
exists" mid-run, on some statements, at random. The cure is
``--no-prepared-statements``; this module tells the user so, at start-up when
it can and mid-run otherwise.

The start-up probe tests the failure itself rather than guessing from version
strings or ``SHOW`` (a pooler forwards ``SHOW`` to the server): it prepares a
statement under a fresh name on one connection and, while that connection
stays open, asks from a second one whether its server session holds that name.
The second is the pool's LISTEN connection, which goes to the same DSN and is
open anyway, so the probe costs a few round trips and no connection (two pool
connections when LISTEN goes elsewhere). A direct connection and session
pooling give each client a session of its own, so the answer is no.
Transaction pooling that passes the name through gives the second client the
first one's session (PgBouncer hands out the most recently released server
connection first), so the answer is yes: proof, not a guess. A PgBouncer 1.21+
that tracks prepared statements (``max_prepared_statements``) renames them on
the server, so the probe finds nothing and prepared statements stay on, as
they may. A pooler that happens to hand out another session every time makes
the probe miss; then the first failing fetch says the same line
(:func:`is_pooler_error`).
"""

from __future__ import annotations

import secrets

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


async def sees_prepared(first: asyncpg.Connection, second: asyncpg.Connection) -> bool:
    """Whether a statement prepared on ``first`` is visible, under its own name, in the
    server session of ``second`` (another client connection to the same DSN): the
    sign of transaction pooling that will lose prepared statements."""
    name = f"kongtask_pooling_probe_{secrets.token_hex(6)}"
    # Kept referenced while looking: asyncpg closes an unreferenced statement
    # with its connection's next query (which also cleans the probe up after).
    statement = await first.prepare(sql.PROBE, name=name)
    try:
        for _ in range(PROBES):
            try:
                if await second.fetchval(sql.PREPARED_HERE, name):
                    return True
            except POOLER_ERRORS:
                return True  # the check's own statement crossed sessions: sharing too
        return False
    finally:
        del statement


def problem_line() -> str:
    """What ``kongtask run`` says (and exits 2 with) when :func:`sees_prepared` is true."""
    return (
        "the database connection goes through a pooler in transaction pooling "
        "(PgBouncer?): a statement prepared on one connection showed up in another "
        f"client's session, so prepared statements would fail at random; {ADVICE}"
    )
