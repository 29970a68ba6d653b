"""A pool's background chores: the poll tick, the stale-lock sweep, heartbeats.

Each loop logs once when its statement starts failing and once when it works
again (a database outage must not flood the log), and never stops the pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterable

import asyncpg

from .db import DB_ERRORS
from .queries import Queries

STALE_LOCK_SWEEP_INTERVAL = 600.0


def heartbeat_args(worker_id: str, running: Iterable[int]) -> tuple[str, str, int, list[str]]:
    """Parameters of ``Queries.heartbeat``: who we are and the jobs we run."""
    return (worker_id, socket.gethostname(), os.getpid(), [str(i) for i in running])


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


async def heartbeat_loop(
    pool: asyncpg.Pool,
    queries: Queries,
    worker_id: str,
    running: Callable[[], Iterable[int]],
    *,
    interval: float,
    dead_after: float,
    nudge: Callable[[], None],
    log: logging.Logger,
) -> None:
    """Stay visibly alive, and free the jobs of pools that are not."""
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            await pool.execute(queries.heartbeat, *heartbeat_args(worker_id, running()))
            row = await pool.fetchrow(queries.recover_dead_workers, dead_after)
        except DB_ERRORS as exc:
            if not failing:
                failing = True
                log.warning("heartbeat failed (%s); retrying", exc)
            continue
        if failing:
            failing = False
            log.warning("heartbeat works again")
        if row is not None and row["workers"]:
            log.warning(
                "freed %d job(s) of worker(s) %s that stopped heartbeating",
                row["jobs"],
                ", ".join(row["workers"]),
            )
            nudge()
