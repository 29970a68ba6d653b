"""A pool connection kept by one loop of the worker for the pool's whole life.

The fetch loop and the completion flusher each run one statement at a time,
many times a second. Borrowing from the asyncpg pool for each would add a
reset round trip (``RESET ALL; UNLISTEN *; ...``) on every release; holding
one connection each avoids it and keeps their prepared statements warm. A
connection that failed is thrown away and replaced on next use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

Hook = Callable[[Any], Awaitable[Any]]


class HeldConnection:
    """Lazily acquires one connection from ``pool`` and keeps it.

    ``setup`` runs on every connection it acquires (a replacement included),
    ``teardown`` before the connection goes back to the pool at release, so a
    connection is lent out again exactly as it was borrowed.
    """

    __slots__ = ("_pool", "_setup", "_teardown", "conn")

    def __init__(
        self, pool: asyncpg.Pool, *, setup: Hook | None = None, teardown: Hook | None = None
    ) -> None:
        self._pool = pool
        self._setup = setup
        self._teardown = teardown
        #: The live connection, or None; a caller that must run on *this*
        #: connection (not a replacement) compares it with ``is``.
        self.conn: Any = None

    async def get(self) -> Any:
        """The held connection, acquiring (and setting up) a fresh one if there is none."""
        conn = self.conn
        if conn is not None and usable(conn):
            return conn
        if conn is not None:
            self.conn = None
            await self._give_back(conn)
        conn = await self._pool.acquire()
        if self._setup is not None:
            try:
                await self._setup(conn)
            except BaseException:
                _terminate(conn)
                await self._give_back(conn)
                raise
        self.conn = conn
        return conn

    async def discard(self) -> None:
        """Drop the connection after an error: it may be mid-protocol or dead.

        Terminated and released, its pool slot reconnects on a later acquire.
        """
        conn, self.conn = self.conn, None
        if conn is None:
            return
        _terminate(conn)
        await self._give_back(conn)

    async def release(self) -> None:
        """Give the connection back to the pool (at shutdown)."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self._teardown is not None:
            try:
                await self._teardown(conn)
            except Exception:  # a broken connection is not lent out again
                _terminate(conn)
        await self._give_back(conn)

    async def _give_back(self, conn: Any) -> None:
        try:
            await self._pool.release(conn)
        except Exception:  # a broken connection must not break shutdown
            pass


def _terminate(conn: Any) -> None:
    try:
        conn.terminate()
    except Exception:  # already released or closed by asyncpg itself
        pass


def usable(conn: Any) -> bool:
    """False once closed, or once asyncpg detached the proxy after losing the
    connection (it returns the slot to the pool itself)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


def tids_literal(ctids: list[str]) -> str:
    """The ``tid[]`` literal of row addresses as PostgreSQL prints them (``(0,1)``).

    Text, cast by the statement, as for job ids: a ``tid[]`` parameter would
    make asyncpg introspect the type on every new connection.
    """
    return '{"' + '","'.join(ctids) + '"}' if ctids else "{}"
