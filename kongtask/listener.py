"""The LISTEN connection: wakes the pool on ``jobs:insert``, reconnects when lost.

One dedicated connection (not from the pool: a pooled connection may be
reset or closed under us). When it dies (server restart, ``pg_terminate_backend``,
network) it is reopened with jittered exponential backoff; each state change
is logged once, not each retry. Notifications lost while disconnected are
covered by the pool refetching as soon as the listener is back, and by the
poll interval.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import asyncpg
import orjson

from .db import connect
from .events import EventEmitter

log = logging.getLogger("kongtask.worker")

CHANNELS = ("jobs:insert", "worker:migrate")


class Listener:
    """Keeps one LISTEN connection alive and forwards its notifications."""

    def __init__(
        self,
        dsn: str | None,
        connect_kwargs: dict[str, object],
        events: EventEmitter,
        *,
        on_insert: Callable[[int], None],
        on_migrate: Callable[[int, bool], None],
        on_connected: Callable[[], None],
    ) -> None:
        self._dsn = dsn
        self._connect_kwargs = connect_kwargs
        self._events = events
        self._on_insert = on_insert
        self._on_migrate = on_migrate
        self._on_connected = on_connected
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.connected = asyncio.Event()

    async def start(self) -> None:
        """Connect once (raising if the database is unreachable), then keep connected."""
        await self._open()
        self._task = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _open(self) -> None:
        self._events.emit("pool:listen:connecting", {})
        conn = await connect(self._dsn, **self._connect_kwargs)
        try:
            for channel in CHANNELS:
                await conn.add_listener(channel, self._notified)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._terminated)
        self._conn = conn
        self._lost.clear()
        self.connected.set()
        self._events.emit("pool:listen:success", {"connection": conn})
        self._on_connected()

    def _terminated(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn:
            self.connected.clear()
            self._lost.set()

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            message = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            message = {}
        if not isinstance(message, dict):
            message = {}
        if channel == "jobs:insert":
            count = message.get("count", 1)
            self._on_insert(count if isinstance(count, int) else 1)
        elif channel == "worker:migrate":
            number = message.get("migrationNumber")
            self._on_migrate(
                number if isinstance(number, int) else 0, bool(message.get("breaking"))
            )

    async def _keep_alive(self) -> None:
        while not self._stopping:
            await self._lost.wait()
            if self._stopping:
                return
            log.warning("LISTEN connection lost; reconnecting")
            delay = 0.05
            while not self._stopping:
                try:
                    await self._open()
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    ConnectionError,
                ) as exc:
                    self._events.emit("pool:listen:error", {"error": exc})
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 10.0)
                    continue
                log.warning("LISTEN connection re-established")
                break

    async def stop(self) -> None:
        """Close the connection and stop reconnecting."""
        self._stopping = True
        self._lost.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=2)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
                conn.terminate()
