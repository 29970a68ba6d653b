"""One fetch: find due jobs, take them, and hand them to the local queue.

A cycle runs on a fetch connection of its own (lent by the
:class:`~kongtask.leases.LeaseKeeper`) and does, in order:

1. after a failed fetch, give back jobs the database says this pool holds but
   that never reached it (a claim can commit and then lose its connection);
2. when a job with a named queue or a job key may be due, claim such jobs
   (the next job of each free queue) with a committed update: every other
   client must see them locked (``queries.jobs.Queries._CLAIMED_KIND``);
3. take the rest of the batch from the plain jobs: claimed the classic way
   (claim mode, the default) for most tasks, locked in a lease for the tasks
   that opted in (see docs/guarantees.md);
4. when the batch came back short, and something may have moved the
   earliest future job (or nothing came at all), read when the next future
   job is due, so a scheduled job starts on time rather than a poll interval late.

Deciding *when* to run a cycle, and how many jobs to ask for, is the
:class:`~kongtask.fetcher.Fetcher`'s job; this module only knows the statements.
"""

from __future__ import annotations

import inspect
import operator
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._core import decode, dispatch
from .events import EventEmitter
from .leases import FetchConnection, LeaseKeeper
from .options import ForbiddenFlags
from .queries import Queries
from .queries.session import ROLLBACK
from .record import Record

#: Seconds a plain fetch may resume after its own last job before it scans
#: the due jobs from the top again (which finds anything it stepped over).
RESCAN_AFTER = 0.5

#: The index order (priority, run_at, id) of a plain row: where a resumed fetch starts.
_RESUME_KEY = operator.itemgetter(
    *(decode.LEASED_COLUMNS.index(name) for name in ("priority", "run_at", "id"))
)
Job = decode.Job
_PG_EPOCH = 946_684_800  # 2000-01-01 UTC, PostgreSQL's epoch, in Unix seconds


def _pg_now() -> int:
    """This moment as PostgreSQL's timestamptz microseconds: the ``locked_at``
    a fetched job reports (the row's own differs by the fetch's round trip)."""
    return int((time.time() - _PG_EPOCH) * 1_000_000)


class Fetched(Record):
    """What one cycle brought."""

    __slots__ = ("got", "queues_full", "next_due")  # noqa: RUF023

    def __init__(self, got: int, queues_full: bool, next_due: float | None) -> None:
        #: Jobs handed to the local queue.
        self.got = got
        #: The keyed-or-queued claim filled the whole batch: more such jobs may be due.
        self.queues_full = queues_full
        #: Seconds until the earliest future job is due, when the cycle looked.
        self.next_due = next_due


class PlainFetch:
    """Plain jobs of some tasks, fetched one way (claimed or leased).

    Remembers where its next fetch may start: after the last job it took
    (priority, run_at, id). What lies before is held by this pool or already
    gone (index entries a scan would walk until a vacuum). The point is
    forgotten when a batch comes back short, when something may have added
    jobs before it (a notification, the poll, the run_at timer), and
    ``RESCAN_AFTER`` seconds after the last full scan.
    """

    __slots__ = ("_sql", "full_scan_at", "leased", "resume", "task_ids")

    def __init__(self, queries: Queries, task_ids: list[int], *, leased: bool) -> None:
        self.leased = leased
        self.task_ids = dispatch.ids_literal(task_ids)
        build = queries.lease_plain if leased else queries.claim_plain
        self._sql = {
            (flags, resume): build(with_flags=flags, resume=resume)
            for flags in (False, True)
            for resume in (False, True)
        }
        self.resume: tuple[int, Any, int] | None = None
        self.full_scan_at = 0.0

    def statement(self, with_flags: bool, now: float) -> tuple[str, tuple[Any, ...]]:
        """The statement to run and the resume arguments that follow the others."""
        if self.resume is not None and now - self.full_scan_at < RESCAN_AFTER:
            return self._sql[with_flags, True], self.resume
        return self.full_scan(with_flags, now)

    def full_scan(self, with_flags: bool, now: float) -> tuple[str, tuple[Any, ...]]:
        self.full_scan_at = now
        return self._sql[with_flags, False], ()

    def note(self, rows: list[Any], wanted: int) -> None:
        """Move the resume point after a fetch that returned ``rows``."""
        if len(rows) < wanted:
            self.resume = None  # the end of the due jobs: start from the top next time
            return
        key = _RESUME_KEY(rows[-1])
        if self.resume is None or key > self.resume:
            self.resume = key


class FetchCycle:
    """The statements of one fetch, for one pool."""

    def __init__(
        self,
        *,
        queries: Queries,
        worker_id: str,
        keeper: LeaseKeeper,
        deliver: Callable[[list[Job]], None],
        held_ids: Callable[[], Iterable[int]],
        tasks: dict[int, str],
        leased_tasks: set[int],
        forbidden_flags: ForbiddenFlags,
        events: EventEmitter,
    ) -> None:
        self._q = queries
        self._worker_id = worker_id
        self._keeper = keeper
        self._deliver = deliver
        self._held_ids = held_ids
        self._names_by_id = dict(tasks)
        self._all_ids = dispatch.ids_literal(list(tasks))
        self._all_names = list(tasks.values())
        self._forbidden = forbidden_flags
        self._events = events
        self._claim_queues = {
            flags: queries.claim_keyed_or_queued(with_flags=flags) for flags in (False, True)
        }
        claimed = [task_id for task_id in tasks if task_id not in leased_tasks]
        leased = [task_id for task_id in tasks if task_id in leased_tasks]
        self.plain = [
            PlainFetch(queries, ids, leased=kind)
            for kind, ids in ((False, claimed), (True, leased))
            if ids
        ]

    def forget_resume(self) -> None:
        """Jobs may have been added before the resume points: scan from the top."""
        for plain in self.plain:
            plain.resume = None

    async def _flags(self) -> list[str] | None:
        source = self._forbidden
        if source is None:
            return None
        value: Any = source() if callable(source) else source
        if inspect.isawaitable(value):
            value = await value
        if not value:
            return None
        return [str(flag) for flag in value]

    async def run(
        self, wanted: int, *, claim_queues: bool, reclaim: bool, look_ahead: bool
    ) -> Fetched:
        """One cycle (see the module docstring). Raises what the database raised;
        a lease it opened is then abandoned and its connection thrown away."""
        keeper = self._keeper
        held = await keeper.connection()
        lease_owns_connection = False
        try:
            async with held.lock:
                if reclaim:
                    await self._give_back_orphans(held)
                conn = await held.get()
                flags = await self._flags()
                delivered: list[Job] = []
                queues_full = False
                if claim_queues:
                    jobs = await self._claim_keyed_or_queued(conn, wanted, flags)
                    queues_full = len(jobs) >= wanted
                    delivered += jobs
                for plain in self.plain:  # claimed first, leased last
                    rest = wanted - len(delivered)
                    if rest <= 0:
                        break
                    if plain.leased:
                        jobs, lease_owns_connection = await self._lease(held, plain, rest, flags)
                    else:
                        jobs = await self._claim_plain(conn, plain, rest, flags)
                    delivered += jobs
                next_due = None
                if len(delivered) < wanted and (look_ahead or not delivered):
                    # Only when something may have moved the earliest future
                    # run_at, or the pool goes idle; after the jobs are handed
                    # out, as this round trip would add its latency to theirs.
                    next_due = await conn.fetchval(self._q.next_run_at, self._all_ids)
        except BaseException:
            if not lease_owns_connection:
                await held.discard()
                keeper.give_back(held)
            raise
        if not lease_owns_connection:
            keeper.give_back(held)
        if delivered and self._events.has("localQueue:getJobs:complete"):
            self._events.emit(
                "localQueue:getJobs:complete", {"jobs": delivered, "worker_id": self._worker_id}
            )
        return Fetched(len(delivered), queues_full, None if next_due is None else float(next_due))

    async def _claim_keyed_or_queued(
        self, conn: Any, wanted: int, flags: list[str] | None
    ) -> list[Job]:
        args: list[Any] = [self._worker_id, self._all_ids, wanted, self._all_names]
        if flags:
            args.append(flags)
        rows = await conn.fetch(self._claim_queues[bool(flags)], *args)
        if not rows:
            return []
        jobs = decode.decode_jobs(rows)
        self._deliver(jobs)
        return jobs

    async def _claim_plain(
        self, conn: Any, plain: PlainFetch, wanted: int, flags: list[str] | None
    ) -> list[Job]:
        args: list[Any] = [plain.task_ids, wanted, self._worker_id]
        if flags:
            args.append(flags)
        locked_at = _pg_now()
        rows = await self._fetch_plain(conn, plain, wanted, flags, args)
        if not rows:
            return []
        jobs = decode.decode_leased(rows, None, self._names_by_id, self._worker_id, locked_at)
        self._deliver(jobs)
        return jobs

    async def _lease(
        self, held: FetchConnection, plain: PlainFetch, wanted: int, flags: list[str] | None
    ) -> tuple[list[Job], bool]:
        """Lock a batch in a transaction left open; returns the jobs and whether
        the connection now belongs to their lease."""
        keeper = self._keeper
        conn = await held.get()
        args: list[Any] = [plain.task_ids, wanted]
        if flags:
            args.append(flags)
        await conn.execute(keeper.begin_statement)
        lease = keeper.begin(held)
        try:
            locked_at = _pg_now()
            rows = await self._fetch_plain(conn, plain, wanted, flags, args)
            if not rows:
                keeper.abandon(lease)
                await conn.execute(ROLLBACK)
                return [], False
            jobs = decode.decode_leased(rows, lease, self._names_by_id, self._worker_id, locked_at)
        except BaseException:
            keeper.abandon(lease)
            raise
        keeper.arm(lease, jobs)
        self._deliver(jobs)
        return jobs, True

    @staticmethod
    async def _fetch_plain(
        conn: Any, plain: PlainFetch, wanted: int, flags: list[str] | None, args: list[Any]
    ) -> list[Any]:
        now = time.monotonic()
        sql, resume = plain.statement(bool(flags), now)
        rows = await conn.fetch(sql, *args, *resume)
        if not rows and resume:
            # Nothing due after the resume point; what is due may lie before it,
            # so read from the top (an empty fetch may end run_once only when it
            # is this one).
            sql, _ = plain.full_scan(bool(flags), now)
            rows = await conn.fetch(sql, *args)
        plain.note(rows, wanted)
        return rows

    async def _give_back_orphans(self, held: FetchConnection) -> None:
        """Free jobs the database says we hold but we never got, undoing their attempt.

        A claim can commit and then lose its connection before its rows reach
        us; those jobs would otherwise stay locked until this pool stops.
        Everything claimed by this worker id that is not running, queued
        locally or awaiting its result is given back. Only run with no other
        fetch in flight (whose claimed rows we have not seen yet).
        """
        conn = await held.get()
        await conn.execute(
            self._q.return_orphans, self._worker_id, dispatch.ids_literal(list(self._held_ids()))
        )
