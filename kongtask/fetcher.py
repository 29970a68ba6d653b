"""The fetch pipelines: when to fetch, how many jobs, and from which statement.

Two pipelines run this loop (one for a pool of concurrency 1, which then
runs its jobs in strict order: ``pipelines_for``), each with a fetch
connection of its own. One fetch is in flight at a time, started before the
local queue runs dry so the next batch is locked while the last one runs;
the second pipeline fetches alongside only while slots wait for jobs (two
concurrent fetches walk past each other's locked rows, which costs the
server CPU for nothing otherwise). A wake-up that a pipeline declines for
that reason is put off, never dropped: the last fetch in flight to end
passes it on, because that fetch may have started before whatever woke us.
One fetch cycle is:

1. if a job with a named queue or a job key may be due: claim such jobs
   (the next job of each free queue) with a committed update, because every
   other client must see them locked (queries.Queries._CLAIMED_KIND);
2. lock the rest of the batch from the plain jobs, in a lease (see
   leases.py), or claim them the classic way when ``lease_time`` is 0;
3. when the batch came back short, read the next future ``run_at`` and set a
   timer, so a scheduled job starts on time rather than a poll interval late.

When a batch comes back short the pool is idle: it waits for a ``jobs:insert``
notification, the poll interval, the ``run_at`` timer, or a finished write
(which may have freed a named queue).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import operator
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from ._core import decode, dispatch
from .db import DB_ERRORS
from .events import EventEmitter
from .leases import LeaseKeeper
from .options import WorkerOptions
from .queries import Queries

#: Concurrent fetch statements per pool.
PIPELINES = 2

#: Seconds a lease fetch may resume after its own last job before it scans
#: the due jobs from the top again (which finds anything it stepped over).
RESCAN_AFTER = 0.5


#: Where the row address sits in a leased row, and the lease index's order
#: (priority, run_at, id) of a leased row: where a resumed fetch starts.
_CTID = decode.LEASED_COLUMNS.index("ctid")
_RESUME_KEY = operator.itemgetter(
    *(decode.LEASED_COLUMNS.index(name) for name in ("priority", "run_at", "id"))
)
_PG_EPOCH = 946_684_800  # 2000-01-01 UTC, PostgreSQL's epoch, in Unix seconds


def pipelines_for(concurrency: int) -> int:
    """One fetch at a time for a pool that runs one job at a time.

    Two fetches in flight lock neighbouring jobs and may return in either
    order, so a single slot could start a later job first; with one slot,
    strict (priority, run_at, id) order is what a user expects (as from
    graphile-worker), and a second fetch would gain it nothing but a
    prefetch the first already does.
    """
    return 1 if concurrency == 1 else PIPELINES


def _pg_now() -> int:
    """This moment as PostgreSQL's timestamptz microseconds: a leased job's
    ``locked_at`` (its row stays unclaimed, so no server clock says when)."""
    return int((time.time() - _PG_EPOCH) * 1_000_000)


class BatchSizer:
    """How many jobs to ask for: about ``HORIZON`` seconds of work at the recent pace.

    Big batches make a drain cheap (one statement and one commit for
    hundreds of jobs); but a pool whose jobs are slow must not lock hundreds
    it will only start minutes later, while other pools idle. So the batch
    follows the rate at which this pool starts jobs, never below what free
    slots need right now and never above ``max_batch``.
    """

    HORIZON = 0.1

    def __init__(self, concurrency: int, max_batch: int) -> None:
        self._concurrency = concurrency
        self._max = max_batch
        self._rate = 0.0
        self._last_time: float | None = None
        self._last_started = 0

    def size(self, started: int, running: int, queued: int, now: float) -> int:
        """The batch to ask for, given jobs started so far and the pool's state."""
        if self._last_time is None:
            self._last_time, self._last_started = now, started
        else:
            elapsed = now - self._last_time
            if elapsed >= 0.01:
                rate = (started - self._last_started) / elapsed
                self._rate = rate if self._rate == 0.0 else 0.5 * (self._rate + rate)
                self._last_time, self._last_started = now, started
        need = self._concurrency - running - queued
        return max(1, min(self._max, max(need, int(self._rate * self.HORIZON))))


class Fetcher:
    """Fetch pipelines of one pool, and the wake-ups that drive them."""

    def __init__(
        self,
        *,
        queries: Queries,
        worker_id: str,
        dispatcher: Any,
        keeper: LeaseKeeper,
        completer: Any,
        pool: asyncpg.Pool,
        options: WorkerOptions,
        events: EventEmitter,
        log: logging.Logger,
        once: bool,
        on_drained: Callable[[], None],
        pipelines: int,
    ) -> None:
        self._q = queries
        self._worker_id = worker_id
        self._dispatcher = dispatcher
        self._keeper = keeper
        self._completer = completer
        self._pool = pool
        self._options = options
        self._events = events
        self.log = log
        self._once = once
        self._on_drained = on_drained
        self._lease_time = options.lease_time
        self.pipelines = pipelines  # fetch loops the pool runs (pipelines_for)
        self._sizer = BatchSizer(options.concurrency, options.max_batch)
        self._sql = {
            (kind, flags): getattr(queries, kind)(with_flags=flags)
            for kind in ("claim_keyed_or_queued", "claim_plain", "lease_plain")
            for flags in (False, True)
        }
        for flags in (False, True):
            self._sql["lease_plain_resume", flags] = queries.lease_plain(
                with_flags=flags, resume=True
            )
        self._task_ids = "{}"  # an array literal (dispatch.ids_literal)
        self._task_names: list[str] = []
        self._names_by_id: dict[int, str] = {}
        self.wakeup = asyncio.Event()
        self.stopping = False
        self._active = 0  # fetch cycles in flight
        self._inflight = 0  # jobs those cycles may bring
        self._more = False  # the last fetch was full: more jobs are probably due
        self._changed = True  # something may have moved the earliest future run_at
        self._claimable_due = True  # a keyed or queued job may be runnable
        self._need_reclaim = False  # a claim failed: we may hold jobs we never received
        self._deferred = False  # a wake-up came while a fetch was in flight: pass it on
        self._run_at_timer: asyncio.TimerHandle | None = None
        # Where the next lease fetch may start: after the last job this pool
        # leased (priority, run_at, id). What lies before it is held by this
        # pool's leases or already deleted (dead index entries a scan would
        # walk). Forgotten when a batch comes back short, when something
        # may have added jobs before it (a notification, the poll, the run_at
        # timer), and RESCAN_AFTER seconds after the last full scan.
        self._resume: tuple[int, Any, int] | None = None
        self._full_scan_at = 0.0
        self._flushes = 0  # writes finished (results or leases); run_once compares it

    def set_tasks(self, task_ids: list[int], task_names: list[str]) -> None:
        """The tasks this pool runs (ids and identifiers, in the same order)."""
        self._task_ids = dispatch.ids_literal(task_ids)
        self._task_names = list(task_names)
        self._names_by_id = dict(zip(task_ids, task_names, strict=True))

    # --------------------------------------------------------------- wake-ups
    def nudge(self) -> None:
        """Ask for a fetch soon (idempotent)."""
        self.wakeup.set()

    def request_fetch(self) -> None:
        """The dispatcher's local queue runs low, or a slot is waiting."""
        if self._active < self.pipelines:
            self.wakeup.set()

    def on_insert(self, count: int) -> None:
        """A ``jobs:insert`` notification."""
        self._resume = None
        self._changed = True
        self._claimable_due = True
        if count > 0 and not self._more:
            self.wakeup.set()

    def on_flushed(self) -> None:
        """Claimed jobs' results were written: named queues may be free again."""
        self._claimable_due = True
        self._on_written()

    def on_settled(self) -> None:
        """A lease settled. It held only plain jobs, so no queue was freed: the
        keyed-or-queued claim is not run again because of it."""
        self._on_written()

    def _on_written(self) -> None:
        self._flushes += 1
        if not self._more or self._once:
            self.wakeup.set()

    def on_poll(self) -> None:
        """The poll interval passed: look again in case a notification was missed."""
        self._resume = None
        if not self._more:
            self._changed = True
            self._claimable_due = True
            self.wakeup.set()

    def _on_run_at_timer(self) -> None:
        self._run_at_timer = None
        self._resume = None
        self._changed = True
        self._claimable_due = True
        self.wakeup.set()

    def _set_run_at_timer(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, 0.0) + 0.001
        timer = self._run_at_timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._run_at_timer = loop.call_at(when, self._on_run_at_timer)

    def stop(self) -> None:
        """Stop fetching; a fetch in flight finishes, so the jobs it locks come back."""
        self.stopping = True
        self.wakeup.set()
        if self._run_at_timer is not None:
            self._run_at_timer.cancel()
            self._run_at_timer = None

    # ------------------------------------------------------------------ fetch
    async def _forbidden_flags(self) -> list[str] | None:
        source = self._options.forbidden_flags
        if source is None:
            return None
        value: Any = source() if callable(source) else source
        if inspect.isawaitable(value):
            value = await value
        if not value:
            return None
        return [str(flag) for flag in value]

    def _want_prefetch(self) -> bool:
        """A pipeline is free and less than a batch is queued or on its way."""
        dispatcher = self._dispatcher
        return (
            self._active < self.pipelines
            and dispatcher.queued() + self._inflight <= dispatcher.low_water
        )

    async def run(self) -> None:
        """One pipeline: fetch whenever woken and there is room, until stopped."""
        delay = 0.05
        failing = False
        dispatcher = self._dispatcher
        loop = asyncio.get_running_loop()
        while not self.stopping:
            await self.wakeup.wait()
            self.wakeup.clear()
            if self.stopping:
                return
            queued = dispatcher.queued()
            batch = self._sizer.size(
                dispatcher.started, len(dispatcher.running), queued, loop.time()
            )
            dispatcher.low_water = batch
            # Up to one batch queued locally plus one per pipeline in flight.
            room = 2 * batch - queued - self._inflight + dispatcher.idle_slots()
            if room <= 0 or (self._active and self._second_fetch_waits(room, batch)):
                # Put off, not dropped: a fetch in flight may have started before
                # what woke us (a freed queue, new jobs), so the wake-up is passed
                # on when it ends. (With none in flight, the local queue is full:
                # a slot that finds it empty asks for the next fetch.)
                self._deferred = self._deferred or self._active > 0
                continue
            wanted = min(room, batch)
            self._active += 1
            self._inflight += wanted
            written = self._flushes
            try:
                got = await self._fetch(wanted)
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                self._active -= 1
                self._inflight -= wanted
                if not failing:
                    failing = True
                    self.log.warning("fetching jobs failed (%s); retrying", exc)
                    self._events.emit("worker:getJob:error", {"error": exc})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self.wakeup.set()
                continue
            self._active -= 1
            self._inflight -= wanted
            if self._deferred and not self._active:
                # The last fetch in flight passes on what was put off (passing
                # it on to a fetch still running would only have the two
                # pipelines defer to each other forever).
                self._deferred = False
                self.wakeup.set()
            if self._need_reclaim:
                self.wakeup.set()  # the other pipeline waits to reclaim alone
            if failing:
                failing = False
                delay = 0.05
                self.log.warning("fetching jobs works again")
            self._more = got >= wanted
            dispatcher.more = self._more
            if not got:
                self._events.emit("worker:getJob:empty", {"worker_id": self._worker_id})
                if self._once:
                    self._check_drained(written)
            elif self._more and self._want_prefetch():
                self.wakeup.set()

    def _second_fetch_waits(self, room: int, batch: int) -> bool:
        """Whether a fetch should wait for the one in flight instead of joining it."""
        if room < max(1, batch // 5):
            return True  # the fetch in flight brings nearly all there is room for
        if not self._dispatcher.idle_slots():
            # A second fetch in flight only while slots starve: otherwise it
            # walks past the rows the first one is locking (server CPU spent on
            # skipped rows) for no gain in throughput.
            return True
        # The reclaim gives back every job claimed by this worker that we do
        # not hold; a fetch in flight holds some we have not seen yet.
        return self._need_reclaim

    def _check_drained(self, written: int) -> None:
        """run_once: stop when nothing is due, in hand or being written.

        A result still being written may free a named queue whose next job is
        then due, so the pool only stops after a fetch that started once every
        result was written came back empty.
        """
        dispatcher = self._dispatcher
        if self._active:
            # The other pipeline's fetch decides, whatever it brings: its jobs
            # may all be run and written before it ends, and then nothing
            # else would wake us.
            self._deferred = True
            return
        busy = (
            dispatcher.running
            or dispatcher.queued()
            or not self._completer.idle
            or self._keeper.pending()
        )
        if busy:
            return  # a finishing job, flush or settle wakes us again
        if written != self._flushes:
            self.wakeup.set()  # something was written meanwhile: look once more
            return
        self._on_drained()

    async def _fetch(self, wanted: int) -> int:
        """One fetch cycle (see the module docstring); returns how many jobs came."""
        keeper = self._keeper
        held = await keeper.connection()
        owned_by_lease = False
        lease = None
        armed = False
        claiming = False
        report = self._events.has("localQueue:getJobs:complete")
        delivered: list[Any] = []  # only filled when somebody listens for the batch
        deliver = self._dispatcher.deliver
        try:
            async with held.lock:
                if self._need_reclaim:
                    await self._reclaim_orphans()
                    self._need_reclaim = False
                flags = await self._forbidden_flags()
                conn = await held.get()
                args: list[Any] = [self._worker_id, self._task_ids, wanted, self._task_names]
                if flags:
                    args.append(flags)
                with_flags = bool(flags)
                got = 0
                if self._claimable_due:
                    self._claimable_due = False
                    claiming = True
                    rows = await conn.fetch(self._sql["claim_keyed_or_queued", with_flags], *args)
                    claiming = False
                    if rows:
                        got = len(rows)
                        jobs = decode.decode_jobs(rows)
                        deliver(jobs)
                        if report:
                            delivered += jobs
                        if got >= wanted:
                            self._claimable_due = True  # there may be more free queues
                rest = wanted - got
                if rest > 0:
                    args[2] = rest
                    if self._lease_time > 0:
                        await conn.execute("begin")
                        lease = keeper.begin(held)
                        owned_by_lease = True
                        lease_args: list[Any] = [self._task_ids, rest]
                        if flags:
                            lease_args.append(flags)
                        now = time.monotonic()
                        resume = self._resume
                        locked_at = _pg_now()
                        rows = None
                        if resume is not None and now - self._full_scan_at < RESCAN_AFTER:
                            rows = await conn.fetch(
                                self._sql["lease_plain_resume", with_flags], *lease_args, *resume
                            )
                        if not rows:
                            # No resume point, or nothing due after it: what is
                            # due may lie before it, so read from the top (an
                            # empty fetch may end run_once only when it is this one).
                            self._full_scan_at = now
                            rows = await conn.fetch(
                                self._sql["lease_plain", with_flags], *lease_args
                            )
                        self._note_resume(rows, rest)
                        if rows:
                            jobs = decode.decode_leased(
                                rows, lease, self._names_by_id, self._worker_id, locked_at
                            )
                            keeper.arm(lease, jobs, [row[_CTID] for row in rows])
                            armed = True
                            got += len(jobs)
                            deliver(jobs)
                            if report:
                                delivered += jobs
                        else:
                            keeper.abandon(lease)
                            owned_by_lease = False
                            lease = None
                            await conn.execute("rollback")
                    else:
                        claiming = True
                        rows = await conn.fetch(self._sql["claim_plain", with_flags], *args)
                        claiming = False
                        if rows:
                            jobs = decode.decode_jobs(rows)
                            got += len(jobs)
                            deliver(jobs)
                            if report:
                                delivered += jobs
                next_due = None
                if got < wanted and (self._changed or not got):
                    # After the jobs are handed out: this round trip would add
                    # its latency to theirs.
                    next_due = await conn.fetchval(self._q.next_run_at, self._task_ids)
        except BaseException:
            if claiming:
                # The claim may have committed unseen (reclaim what we hold but
                # never got), or not at all: its jobs are still due either way.
                self._need_reclaim = True
                self._claimable_due = True
            if lease is not None and not armed:
                keeper.abandon(lease)
                owned_by_lease = False
            if not owned_by_lease:
                await held.discard()
                keeper.give_back(held)
            raise
        if not owned_by_lease:
            keeper.give_back(held)
        if got < wanted:
            self._changed = False
            if next_due is not None:
                self._set_run_at_timer(float(next_due))
        if got and report:
            self._events.emit(
                "localQueue:getJobs:complete", {"jobs": delivered, "worker_id": self._worker_id}
            )
        return got

    def _note_resume(self, rows: list[Any], wanted: int) -> None:
        if len(rows) < wanted:
            self._resume = None  # the end of the due jobs: start from the top next time
            return
        key = _RESUME_KEY(rows[-1])
        if self._resume is None or key > self._resume:
            self._resume = key

    async def _reclaim_orphans(self) -> None:
        """After a failed claim, free jobs the database says we hold but we never got.

        A claim can commit and then lose its connection before the rows reach
        us; those jobs would stay locked for hours. Everything claimed by this
        worker id that is not running, queued locally or awaiting its result
        is given back with its attempt undone. Leased jobs need none of this:
        a lost lease connection rolls back by itself.
        """
        dispatcher = self._dispatcher
        held = [
            *dispatcher.running,
            *(job.id for job in dispatcher.local),
            *self._completer.pending_ids(),
        ]
        await self._pool.execute(
            self._q.return_orphans, self._worker_id, dispatch.ids_literal(held)
        )
