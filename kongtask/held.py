"""A pool connection kept by one loop of the worker for the pool's whole life.

The fetch loop and the completion flusher each run one statement at a time,
many times a second. Borrowing from the asyncpg pool for each would add a
reset round trip (``RESET ALL; UNLISTEN *; ...``) on every release; holding
one connection each avoids it and keeps their prepared statements warm. A
connection that failed is thrown away and replaced on next use.
"""

from __future__ import annotations

import asyncpg


class HeldConnection:
    """Lazily acquires one connection from ``pool`` and keeps it."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None

    async def get(self) -> asyncpg.Connection:
        """The held connection, acquiring a fresh one if there is none."""
        conn = self._conn
        if conn is None or not _usable(conn):
            if conn is not None:
                await self._give_back(conn)
            conn = self._conn = await self._pool.acquire()
        return conn  # type: ignore[return-value]

    async def discard(self) -> None:
        """Drop the connection after an error: it may be mid-protocol or dead.

        Terminated and released, its pool slot reconnects on a later acquire.
        """
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.terminate()
        except Exception:  # already released or closed by asyncpg itself
            pass
        await self._give_back(conn)

    async def release(self) -> None:
        """Give the connection back to the pool (at shutdown)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._give_back(conn)

    async def _give_back(self, conn: asyncpg.Connection) -> None:
        try:
            await self._pool.release(conn)
        except Exception:  # a broken connection must not break shutdown
            pass


def _usable(conn: asyncpg.Connection) -> bool:
    """False once closed, or once asyncpg detached the proxy after losing the
    connection (it returns the slot to the pool itself)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False
