"""A pool's background chores: the poll tick, the stale-lock sweep, heartbeats,
recovery of dead pools' jobs, and the fence.

Each loop logs once when its statement starts failing and once when it works
again (a database outage must not flood the log), and never stops the pool.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg

from . import liveness
from .db import DB_ERRORS, DB_OR_TIMEOUT_ERRORS
from .held import HeldConnection
from .queries import Queries

STALE_LOCK_SWEEP_INTERVAL = 600.0


async def poll_loop(
    pool: asyncpg.Pool,
    queries: Queries,
    interval: float,
    on_poll: Callable[[], None],
    nudge: Callable[[], None],
    log: logging.Logger,
) -> None:
    """Refetch every ``interval`` (notifications can be missed) and sweep 4-hour locks."""
    since_sweep = STALE_LOCK_SWEEP_INTERVAL  # sweep once right after start
    while True:
        on_poll()
        if since_sweep >= STALE_LOCK_SWEEP_INTERVAL:
            since_sweep = 0.0
            try:
                freed = await pool.fetchval(queries.sweep_stale_locks)
            except DB_ERRORS as exc:
                log.warning("stale-lock sweep failed: %s", exc)
            else:
                if freed:
                    log.warning("freed %d lock(s) older than 4 hours", freed)
                    nudge()
        await asyncio.sleep(interval)
        since_sweep += interval


class Heartbeat:
    """Keeps this pool visibly alive, frees the jobs of pools that are not, and
    fences this pool off when it has been cut off so long that others may free
    its jobs.

    Other pools declare this one dead when its row's ``last_seen`` (the
    database's clock when a heartbeat ran) is older than ``dead_after``. A
    heartbeat runs no earlier than it was sent, so once ``dead_after -
    interval`` has passed since the last heartbeat that was sent and succeeded,
    this pool calls ``on_fenced`` (which stops its running jobs) a whole
    interval before anyone may free them: a job never runs on two pools at
    once because a connection was lost. When a heartbeat succeeds again,
    ``on_unfenced`` says whether the row had been deleted meanwhile (declared
    dead, its jobs freed).

    Each tick also frees the jobs of pools on this host whose process is gone
    (:mod:`kongtask.liveness`), at once, and of pools silent for ``dead_after``.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        queries: Queries,
        worker_id: str,
        running: Callable[[], Iterable[int]],
        *,
        interval: float,
        dead_after: float,
        on_freed: Callable[[], None],
        on_fenced: Callable[[], None],
        on_unfenced: Callable[[bool], None],
        log: logging.Logger,
    ) -> None:
        # A connection of its own for the pool's life: a heartbeat that waited
        # for a free connection behind busy handlers would let others declare
        # this pool dead, and the fence stop its jobs, while nothing is wrong.
        self._conn = HeldConnection(pool)
        self._q = queries
        self._worker_id = worker_id
        self._running = running
        self.interval = interval
        self.dead_after = dead_after
        self._on_freed = on_freed
        self._on_fenced = on_fenced
        self._on_unfenced = on_unfenced
        self.log = log
        self._host, self._pid, self._started = liveness.own_identity()
        self._hostname = socket.gethostname()
        self._fence_timer: asyncio.TimerHandle | None = None
        self.fenced = False

    def _args(self, running: Iterable[int]) -> tuple[Any, ...]:
        return (
            self._worker_id,
            self._hostname,
            self._pid,
            self._host,
            self._started,
            [str(job_id) for job_id in running],
        )

    def _renewed(self, sent: float) -> None:
        if self._fence_timer is not None:
            self._fence_timer.cancel()
        loop = asyncio.get_running_loop()
        self._fence_timer = loop.call_at(sent + self.dead_after - self.interval, self._fence)

    def _fence(self) -> None:
        self._fence_timer = None
        if not self.fenced:
            self.fenced = True
            self._on_fenced()

    def identity(self) -> tuple[Any, ...]:
        """The first five parameters of the heartbeat and of the start-up statement."""
        return self._args(())[:5]

    async def joined(self, conn: Any, sent: float, row: Any) -> None:
        """The start-up statement (:attr:`Queries.join`), sent at loop time ``sent``,
        ran the first heartbeat; start the fence's clock, and free what the dead
        pools it found were holding.

        Both happen before the first fetch: a pool killed right after claiming a
        job must already be known, or nobody frees it, and a restarted pool should
        run its dead predecessor's jobs at once."""
        self._renewed(sent)
        peers = zip(row["peer_ids"], row["peer_pids"], row["peer_starts"], strict=True)
        exited = self._exited(
            (worker_id, int(pid), None if started is None else int(started))
            for worker_id, pid, started in peers
        )
        if exited or row["silent"]:
            await self._free_dead(conn, exited)

    def _exited(self, peers: Iterable[tuple[str, int, int | None]]) -> list[str]:
        """Which of these pools on this host (id, pid, process start) have no process."""
        return [worker_id for worker_id, pid, started in peers if liveness.is_gone(pid, started)]

    async def _recover(self, conn: Any) -> None:
        """Free the jobs of dead pools: gone from this host, or silent too long."""
        exited: list[str] = []
        if self._host is not None:
            rows = await conn.fetch(self._q.workers_on_host, self._host, self._worker_id)
            exited = self._exited((r["worker_id"], r["pid"], r["process_start"]) for r in rows)
        await self._free_dead(conn, exited)

    async def _free_dead(self, conn: Any, exited: list[str]) -> None:
        row = await conn.fetchrow(self._q.recover_dead_workers, self.dead_after, exited)
        if row is not None and row["workers"]:
            self.log.warning(
                "freed %d job(s) of dead worker(s) %s",
                row["jobs"],
                ", ".join(row["workers"]),
            )
            self._on_freed()

    async def run(self) -> None:
        """Beat every ``interval`` until cancelled."""
        failing = False
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(self.interval)
                sent = loop.time()
                try:
                    conn = await asyncio.wait_for(self._conn.get(), self.interval)
                    was_missing = await conn.fetchval(
                        self._q.heartbeat, *self._args(self._running()), timeout=self.interval
                    )
                    self._renewed(sent)
                    if self.fenced:
                        self.fenced = False
                        self._on_unfenced(bool(was_missing))
                    await self._recover(conn)
                except DB_OR_TIMEOUT_ERRORS as exc:
                    await self._conn.discard()
                    if not failing:
                        failing = True
                        self.log.warning("heartbeat failed (%s); retrying", exc)
                    continue
                if failing:
                    failing = False
                    self.log.warning("heartbeat works again")
        finally:
            if self._fence_timer is not None:
                self._fence_timer.cancel()
                self._fence_timer = None
            await self._conn.release()
