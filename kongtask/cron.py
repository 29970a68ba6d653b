"""The cron scheduler: enqueue each cron item's job once per due minute, across all workers.

Every worker pool with a crontab runs a :class:`CronScheduler`. They share
``_private_known_crontabs`` with each other and with graphile-worker, and one
rule makes them agree: a job for ``(identifier, minute)`` is added only by the
statement that moves that identifier's ``last_execution`` forward to the
minute, in the same transaction. A second pool (Node or Python) trying the
same minute finds ``last_execution`` already there and adds nothing, so N
pools enqueue each tick exactly once.

The statement (:attr:`kongtask.queries.cron.CronQueries.schedule`) takes every
(item, minute) pair due in one go (the normal tick, or a whole catch-up or
backfill) as one JSON parameter. It row-locks the items' ``known_crontabs``
rows in identifier order (no deadlocks between pools), keeps the pairs newer than the locked
``last_execution`` (under READ COMMITTED a locking read returns the newest
committed row, so a pool that waited sees what the winner wrote), advances
``last_execution`` to the newest kept minute, and adds the kept pairs'
jobs through the schema's own functions (``add_jobs`` once for the pairs
without a job key, ``add_job`` per pair with one, oldest first), so NOTIFY and
job keys behave exactly as for any other job. graphile-worker's own
statement upserts instead, which cannot serve several minutes of one item at
once; ours can, so a backfill of a week of minutes is a few statements rather
than ten thousand.

Timing follows graphile-worker: ticks on UTC minute boundaries; the first
tick is the first minute boundary at or after start; a timer that fires
before its minute (clock stepped back) emits ``cron:prematureTimer`` and
waits again; one that fires after a later minute has begun (event loop stall,
clock stepped forward) emits ``cron:overdueTimer`` and catches up. Catch-up
differs on purpose: graphile-worker enqueues every missed minute of every
item, kongtask only those inside each item's ``fill`` window (marked
``backfilled: true``), plus the current minute for all items. A stall or a
clock jump of hours therefore never floods the queue with hundreds of jobs
nobody asked to have replayed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson

from .crontab import CronItem, as_cron_items
from .events import EventEmitter
from .queries.cron import CronQueries

__all__ = ["CronScheduler"]

log = logging.getLogger("kongtask.cron")

UTC = timezone.utc
ONE_MINUTE = timedelta(minutes=1)
Clock = Callable[[], datetime]

# Waits longer than this re-read the clock on the way, so that a clock stepped
# back and then forward again is not slept through.
_MAX_SLEEP = 60.0
# graphile-worker's cron retry: 200 ms growing by 1.5x up to a minute.
_RETRY_MIN = 0.2
_RETRY_FACTOR = 1.5
_RETRY_MAX = 60.0
# (item, minute) pairs per statement; a long backfill is split so no single
# statement holds its locks for long or builds an enormous parameter.
_BATCH = 2000


def _system_clock() -> datetime:
    return datetime.now(UTC)


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _ceil_minute(moment: datetime) -> datetime:
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + ONE_MINUTE


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    """JavaScript's ``Date.toISOString`` form, so ``_cron.ts`` is the same text whichever
    worker scheduled the job (kongtask ticks are whole minutes, so ``.000``)."""
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


class CronScheduler:
    """Enqueues the jobs of ``items`` on UTC minute boundaries; one per worker pool.

    ``clock`` (a callable returning the current time, default the system's
    UTC clock) exists so tests can drive the scheduler through any minute,
    DST change or clock jump without waiting; :meth:`tick` runs one timer
    firing at a given time.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        items: Sequence[CronItem],
        events: EventEmitter,
        *,
        logger: logging.Logger | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.items: list[CronItem] = as_cron_items(items)
        self.events = events
        self.log = logger or log
        self._clock = clock or _system_clock
        self._sql = CronQueries(schema)
        self._expected: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopped = False

    def __repr__(self) -> str:
        return f"<CronScheduler schema={self.schema!r} items={len(self.items)}>"

    @property
    def next_tick(self) -> datetime | None:
        """The UTC minute the next timer firing will schedule (None before start)."""
        return self._expected

    def now(self) -> datetime:
        """The scheduler's clock, as aware UTC."""
        return _as_utc(self._clock())

    # ------------------------------------------------------------- lifecycle
    async def start(self, *, timer: bool = True) -> None:
        """Register identifiers, backfill, then start the minute timer; returns when the
        backfill is written.

        Backfill happens before the first tick because the tick advances
        ``last_execution``, after which older minutes could no longer be
        filled. ``timer=False`` leaves ticking to :meth:`tick` (tests).
        Database errors propagate: a worker should not run with cron silently
        missing.
        """
        if self._expected is not None:
            raise RuntimeError("CronScheduler.start() called twice")
        start = self.now()
        self.events.emit("cron:starting", {"cron": self, "start": start})
        if self.items:
            await self._register_and_backfill(start)
        self._expected = _ceil_minute(start)
        self.events.emit("cron:started", {"cron": self, "start": start})
        if timer and self.items:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kongtask-cron")

    async def stop(self) -> None:
        """Stop the timer (idempotent). A tick in flight is cancelled; its statement is
        atomic, so it either scheduled its jobs completely or not at all."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _register_and_backfill(self, start: datetime) -> None:
        identifiers = [item.identifier for item in self.items]
        rows = await self.pool.fetch(self._sql.register, identifiers, start)
        known = {row["identifier"]: row for row in rows}
        pairs: list[tuple[CronItem, datetime, bool]] = []
        for item in self.items:
            row = known.get(item.identifier)
            # Only identifiers known before this start are backfilled (a new
            # item has no past to make up), and never before they were known
            # or at/before their last execution.
            if row is None or item.backfill_period <= 0:
                continue
            low = _ceil_minute(start - timedelta(seconds=item.backfill_period))
            last = row["last_execution"]
            if last is not None:
                low = max(low, _floor_minute(last) + ONE_MINUTE)
            else:
                low = max(low, _ceil_minute(row["known_since"]))
            if low < start:
                pairs.extend((item, ts, True) for ts in item.due_times(low, start))
        if pairs:
            await self._schedule(pairs)

    # ----------------------------------------------------------------- timer
    async def _run(self) -> None:
        failures = 0
        while not self._stopped:
            assert self._expected is not None
            delay = (self._expected - self.now()).total_seconds()
            if delay > _MAX_SLEEP:
                await asyncio.sleep(_MAX_SLEEP)
                continue
            # A millisecond past the boundary, so the clock reads the new minute.
            await asyncio.sleep(max(delay, 0.0) + 0.001)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                retry = min(_RETRY_MIN * _RETRY_FACTOR ** (failures - 1), _RETRY_MAX)
                self.log.error(
                    "cron tick for %s failed (attempt %d): %s; retrying in %.1fs",
                    _iso(self._expected),
                    failures,
                    exc,
                    retry,
                    exc_info=not isinstance(exc, OSError | asyncpg.PostgresError),
                )
                await asyncio.sleep(retry)
            else:
                failures = 0

    async def tick(self, now: datetime | None = None) -> int:
        """One timer firing at ``now`` (default: the clock); returns the number of jobs added.

        Before the expected minute: ``cron:prematureTimer``, nothing else. At
        it: the items due that minute. After it: ``cron:overdueTimer``, the
        missed minutes inside each item's fill window, then the current
        minute. On a database error the expected minute stays put, so the
        retry covers it (as an overdue tick, if a minute has passed).
        """
        if self._expected is None:
            raise RuntimeError("CronScheduler.tick() before start()")
        async with self._lock:
            moment = _as_utc(now) if now is not None else self.now()
            expected = self._expected
            current = _floor_minute(moment)
            if current < expected:
                self.log.debug(
                    "cron timer fired %.3fs before %s (clock stepped back?); waiting again",
                    (expected - moment).total_seconds(),
                    _iso(expected),
                )
                self.events.emit(
                    "cron:prematureTimer",
                    {"cron": self, "current": moment, "expected": expected},
                )
                return 0
            pairs: list[tuple[CronItem, datetime, bool]] = []
            if current > expected:
                self.log.warning(
                    "cron timer for %s fired late, at %s; catching up within fill windows",
                    _iso(expected),
                    moment.isoformat(),
                )
                self.events.emit(
                    "cron:overdueTimer",
                    {"cron": self, "current": moment, "expected": expected},
                )
                for item in self.items:
                    if item.backfill_period > 0:
                        low = _ceil_minute(moment - timedelta(seconds=item.backfill_period))
                        low = max(low, expected)
                        if low < current:
                            pairs.extend((item, ts, True) for ts in item.due_times(low, current))
            pairs.extend((item, current, False) for item in self.items if item.is_due(current))
            added = await self._schedule(pairs) if pairs else 0
            self._expected = current + ONE_MINUTE
            return added

    # -------------------------------------------------------------- database
    async def _schedule(self, pairs: list[tuple[CronItem, datetime, bool]]) -> int:
        """Emit the events and run the scheduling statement over ``pairs``, oldest first."""
        pairs.sort(key=lambda pair: pair[1])  # stable: item order within a minute
        events = self.events
        if events.has("cron:backfill") or events.has("cron:schedule"):
            by_minute: dict[tuple[datetime, bool], list[CronItem]] = {}
            for item, ts, backfilled in pairs:
                by_minute.setdefault((ts, backfilled), []).append(item)
            for (ts, backfilled), items in by_minute.items():
                events.emit(
                    "cron:backfill" if backfilled else "cron:schedule",
                    {"cron": self, "timestamp": ts, "items": items},
                )
        added = 0
        for begin in range(0, len(pairs), _BATCH):
            batch = pairs[begin : begin + _BATCH]
            specs = orjson.dumps(
                [self._spec(item, ts, backfilled) for item, ts, backfilled in batch]
            )
            identifiers = list(dict.fromkeys(item.identifier for item, _, _ in batch))
            rows = await self.pool.fetch(self._sql.schedule, specs.decode(), identifiers)
            added += len(rows)
        if added:
            self.log.debug("cron added %d job(s)", added)
        return added

    def _spec(self, item: CronItem, ts: datetime, backfilled: bool) -> dict[str, Any]:
        stamp = _iso(ts)
        # graphile-worker's merge: the item's payload, then `_cron` (which wins).
        payload = {**(item.payload or {}), "_cron": {"ts": stamp, "backfilled": backfilled}}
        return {
            "id": item.identifier,
            "ts": stamp,
            "task": item.task,
            "payload": payload,
            "queue": item.queue_name,
            "max": item.max_attempts,
            "key": item.job_key,
            "mode": item.job_key_mode,
            "priority": item.priority,
        }
