"""Fetch connections and leases: batches whose rows stay locked by their fetch transaction.

Why leases: claiming a job the classic way (graphile-worker's) is an UPDATE
(attempts + 1, locked_by, locked_at), a new row version with new index
entries, followed by the DELETE that completes it: two writes per job, most
of PostgreSQL's work per job. A lease instead opens a transaction, locks a
batch of jobs with ``FOR UPDATE SKIP LOCKED`` and keeps it open while they
run; every fetcher (kongtask or graphile-worker) skips locked rows, so nobody
else can take them. When the batch is done one statement deletes the
successes, records the failures, and claims (the classic way) whatever is
still running at the lease's deadline; then the transaction commits. A
worker that dies loses its connection, and PostgreSQL hands the jobs to the
next fetcher at once, without waiting for heartbeats.

The fetch connections are held for the pool's whole life (no pool reset per
fetch) and decode ``timestamptz`` as PostgreSQL's microseconds, which the
job objects turn into datetimes only when read.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, cast

import asyncpg

from ._core import decode, dispatch
from .completion import Completer
from .db import DB_ERRORS
from .held import HeldConnection, Hook, tids_literal, usable
from .queries import Queries
from .queries.session import ANY_SIZE_PLANS, COMMIT, begin_lease_sql

Lease = dispatch.Lease
Job = decode.Job

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


def _encode_timestamptz(value: datetime | int) -> tuple[int]:
    """A datetime, or PostgreSQL microseconds as this codec decodes them, -> the
    codec's tuple (a lease's resume key sends back a run_at it received)."""
    if type(value) is int:
        return (value,)
    assert isinstance(value, datetime)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - _PG_EPOCH
    return ((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds,)


async def decode_timestamps_as_micros(conn: Any) -> None:
    """Make ``conn`` return timestamptz as PostgreSQL's microseconds (an int).

    Building four datetimes per fetched row was a fifth of the worker's CPU;
    the job objects convert on first read (``_core.decode.pg_timestamp``).
    """
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_encode_timestamptz,
        decoder=operator.itemgetter(0),
        format="tuple",
    )


def _encode_json(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


async def decode_json_as_bytes(conn: Any) -> None:
    """Make ``conn`` return ``json`` values as their UTF-8 bytes, unparsed.

    asyncpg's own codec decodes the text into a ``str``, and ``orjson.loads``
    of a non-ASCII ``str`` first encodes it back to UTF-8: two passes over
    every payload, a tenth of the worker's CPU for a 1.7 KB payload with some
    non-ASCII text. ``bytes`` (the identity on what PostgreSQL's binary
    format sends for ``json``) hands orjson the wire bytes instead.
    """
    await conn.set_type_codec(
        "json", schema="pg_catalog", encoder=_encode_json, decoder=bytes, format="binary"
    )


async def _reset_codec(conn: Any) -> None:
    await conn.reset_type_codec("timestamptz", schema="pg_catalog")
    await conn.reset_type_codec("json", schema="pg_catalog")


def _done_rows(lease: Lease) -> list[str]:
    """Addresses of the lease's rows whose jobs succeeded."""
    if not lease.unfinished and not lease.failed and not lease.dropped:
        return lease.ctids  # every job succeeded: the usual case, no lookups
    row_of = dict(zip([job.id for job in lease.jobs], lease.ctids, strict=True))
    return [row_of[job_id] for job_id in lease.done]


class FetchConnection(HeldConnection):
    """A held connection of the fetcher, with the lock its statements run under:
    a lease may settle (its jobs all done) while its fetch still reads the next
    run_at on the same connection."""

    __slots__ = ("lock",)

    def __init__(self, pool: asyncpg.Pool, setup: Hook) -> None:
        super().__init__(pool, setup=setup, teardown=_reset_codec)
        self.lock = asyncio.Lock()


class LeaseKeeper:
    """Lends fetch connections, and settles the leases that keep some of them.

    At most ``max_connections`` fetch connections exist; a connection that
    carries an open lease is unavailable until the lease settles, which is
    what bounds how many leases a pool has open (a fetch waits otherwise).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        queries: Queries,
        worker_id: str,
        *,
        lease_time: float,
        max_connections: int,
        completer: Completer,
        on_settled: Callable[[], None],
        log: logging.Logger,
        session_settings: bool,
    ) -> None:
        self._pool = pool
        self._q = queries
        self._worker_id = worker_id
        self.lease_time = lease_time
        self._max = max_connections
        self._completer = completer
        self._on_settled = on_settled
        self.log = log
        self._session_settings = session_settings
        self._free: list[FetchConnection] = []
        self._all: list[FetchConnection] = []
        self._available = asyncio.Event()
        self.open: set[Lease] = set()
        self._lost_listeners: dict[Lease, Callable[[Any], None]] = {}
        self._settling: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        # Every lease sets its own idle timeout with SET LOCAL, so a shorter one
        # of the database or role (or one a PgBouncer session lacks) never ends
        # a lease while its jobs run, and one that never settles (an event loop
        # stalled by a sync handler run on it) is still ended by PostgreSQL.
        # An int formatted into a fixed statement: SET takes no parameters.
        idle_ms = int(max(60.0, 20 * lease_time) * 1000)
        self.begin_statement = begin_lease_sql(idle_ms)

    async def _setup(self, conn: Any) -> None:
        await decode_timestamps_as_micros(conn)
        await decode_json_as_bytes(conn)
        if not self._session_settings:
            return
        # Session settings, undone when the pool resets the connection. Generic
        # plans: this connection runs the fetch and settle statements, whose
        # plans do not depend on their parameters, while a custom plan per
        # execution (which PostgreSQL keeps choosing) re-estimated every element
        # of a 1,000-element id or ctid array: a tenth of the server's CPU in a
        # drain. No sequential scans, whatever the table held when planned:
        # see ANY_SIZE_PLANS.
        await conn.execute(ANY_SIZE_PLANS)

    # ----------------------------------------------------------- connections
    async def connection(self) -> FetchConnection:
        """A free fetch connection; waits while all of them carry open leases."""
        while True:
            if self._free:
                return self._free.pop()
            if len(self._all) < self._max:
                held = FetchConnection(self._pool, self._setup)
                self._all.append(held)
                return held
            self._available.clear()
            await self._available.wait()

    def give_back(self, held: FetchConnection) -> None:
        """A fetch connection that carries no lease is free again."""
        self._free.append(held)
        self._available.set()

    # ----------------------------------------------------------------- leases
    def begin(self, held: FetchConnection) -> Lease:
        """A lease for the batch just locked on ``held`` (jobs are attached later).

        When the connection goes, PostgreSQL frees the rows at once, so the
        lease is marked lost the moment asyncpg notices: its jobs still in the
        local queue are then dropped rather than started.
        """
        lease = Lease([], self._finished)
        conn = held.conn
        lease.conn = (held, conn)

        def lost(_: Any) -> None:
            lease.lost = True

        conn.add_termination_listener(lost)
        self._lost_listeners[lease] = lost
        self.open.add(lease)
        return lease

    def _forget_listener(self, lease: Lease, conn: Any) -> None:
        listener = self._lost_listeners.pop(lease, None)
        if listener is not None and conn is not None and usable(conn):
            conn.remove_termination_listener(listener)

    def abandon(self, lease: Lease) -> None:
        """The lease's fetch locked nothing (or failed before any job came)."""
        lease.open = False
        lease.jobs = []
        self.open.discard(lease)
        self._forget_listener(lease, lease.conn[1])

    def arm(self, lease: Lease, jobs: list[Job]) -> None:
        """Give the lease its jobs, their rows' addresses and its deadline."""
        lease.jobs = jobs
        lease.ctids = cast(list[str], [job.ctid for job in jobs])  # every leased row has one
        lease.unfinished = len(jobs)
        lease.timer = self._loop.call_later(self.lease_time, self._deadline, lease)

    def _finished(self, lease: Lease) -> None:
        self._start_settle(lease)

    def _deadline(self, lease: Lease) -> None:
        lease.timer = None
        if lease.open:
            self._start_settle(lease)

    def _start_settle(self, lease: Lease) -> None:
        lease.open = False  # outcomes from now on go to the completer
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None
        unfinished = lease.unfinished_ids() if lease.unfinished else []
        done_rows = _done_rows(lease)
        # Jobs point at their lease and the lease at its jobs: a reference cycle
        # that would keep every job of the batch alive until the cyclic GC ran
        # (which then cost a third of the worker's CPU). Cut it here.
        lease.jobs = []
        lease.ctids = []
        task = self._loop.create_task(self._settle(lease, unfinished, done_rows))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, lease: Lease, unfinished: list[int], done_rows: list[str]) -> None:
        held, conn = lease.conn
        async with held.lock:
            await self._settle_on(lease, held, conn, unfinished, done_rows)

    async def _settle_on(
        self,
        lease: Lease,
        held: FetchConnection,
        conn: Any,
        unfinished: list[int],
        done_rows: list[str],
    ) -> None:
        done = lease.done
        failed = lease.failed
        try:
            if conn is None or held.conn is not conn or not usable(conn):
                raise ConnectionError("the lease's connection was lost")
            if done or failed or unfinished:
                ids_literal = dispatch.ids_literal
                await conn.execute(
                    self._q.settle_lease,
                    tids_literal(done_rows),
                    ids_literal([entry[0] for entry in failed]),
                    [entry[1] for entry in failed],
                    [entry[2] for entry in failed],
                    ids_literal(unfinished),
                    self._worker_id,
                )
            await conn.execute(COMMIT)
        except DB_ERRORS as exc:
            await held.discard()
            self._lost(lease, exc, done, failed, unfinished)
            self.give_back(held)
        except BaseException:
            await held.discard()
            self.give_back(held)
            raise
        else:
            self.give_back(held)
        finally:
            self.open.discard(lease)
            self._forget_listener(lease, conn)
            self._on_settled()

    def _lost(
        self,
        lease: Lease,
        exc: BaseException,
        done: list[int],
        failed: list[tuple[int, str, str | None]],
        unfinished: list[int],
    ) -> None:
        """The lease's transaction is gone (rolled back, or committed unseen).

        Its jobs are free again. Successes are written again the ordinary way
        (deleting a deleted job does nothing), so they do not run twice when
        the rollback happened; recorded failures are dropped (the job runs
        again, its attempt not counted), and jobs still running may be taken
        by another worker meanwhile: at-least-once, never lost.
        """
        for job_id in done:
            self._completer.complete(job_id, None)
        self.log.warning(
            "a lease of %d job(s) ended with its connection (%s): %d success(es) written "
            "again, %d failure(s) and %d running job(s) may run again",
            len(done) + len(failed) + len(unfinished) + len(lease.dropped),
            exc,
            len(done),
            len(failed),
            len(unfinished),
        )

    async def settle_all(self) -> None:
        """Settle every open lease now (shutdown) and wait until all are written."""
        for lease in list(self.open):
            if lease.open:
                self._start_settle(lease)
        # Settles that have ended leave ``_settling`` only in a later loop turn,
        # and since Python 3.12 gathering finished tasks does not yield one:
        # wait for the unfinished ones only, or this would spin for ever.
        while unfinished := [task for task in self._settling if not task.done()]:
            await asyncio.gather(*unfinished, return_exceptions=True)

    def pending(self) -> bool:
        """Whether any lease is open or settling (a settle that has just ended
        is not: its task leaves ``_settling`` only in a later loop turn)."""
        return bool(self.open) or any(not task.done() for task in self._settling)

    async def close(self) -> None:
        """Release every fetch connection (after settle_all)."""
        for held in self._all:
            await held.release()
        self._all.clear()
        self._free.clear()
