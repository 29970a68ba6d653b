"""When to fetch and how many jobs: the fetcher's state machine.

Every reason to look for jobs again is posted to one :class:`Wakeups`
mailbox: a slot waiting for work or a local queue running low (the
dispatcher), a ``jobs:insert`` notification (the listener), results written
(the completer, which may have freed a named queue), a lease settled, the
poll tick, the run_at timer, recovered jobs (heartbeats), the end of a fetch.
One coroutine, :meth:`Fetcher.run`, takes the reasons in turn and moves
between named states; :data:`TRANSITIONS` lists the moves allowed, and any
other raises.

``IDLE``
    No fetch in flight; waiting for a reason to look.
``FETCHING``
    Fetches in flight (one, or two while slots starve: ``pipelines_for``),
    and nothing has happened since the newest of them began.
``STALE``
    Fetches in flight, and a reason to look arrived after the newest began:
    it may have read the table before the change (a freed queue, new jobs),
    so when the last one ends the fetcher looks again. A wake-up is thus put
    off while a fetch is in flight, never dropped.
``BACKOFF``
    A fetch failed. The next one waits for the back-off and for every other
    fetch to end (its claimed rows have not reached us yet), then first gives
    back what the database says this pool holds but never received.
``FENCED``
    The pool lost its database for so long that other pools may free its
    jobs (see :class:`~kongtask.housekeeping.Heartbeat`): nothing is fetched.
    When the database answers again the fetcher goes to ``BACKOFF``, whose
    retry first gives back whatever the pool still holds but dropped.
``STOPPING``
    Stop was asked while fetches were in flight; they finish, so the jobs they
    take come back to the pool and are returned by its shutdown.
``DRAINED`` (``run_once`` only)
    A fetch that began after every result was written came back empty, and
    nothing runs, waits or is being written: the pool may stop.
``STOPPED``
    Nothing more will be fetched.

One fetch is :class:`~kongtask.fetch_cycle.FetchCycle` (the statements);
how many jobs it asks for is :class:`BatchSizer`'s call.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable

from ._core import dispatch
from .db import DB_ERRORS
from .events import EventEmitter
from .fetch_cycle import FetchCycle, Fetched
from .record import Record

#: Concurrent fetch statements per pool.
PIPELINES = 2


def pipelines_for(concurrency: int) -> int:
    """One fetch at a time for a pool that runs one job at a time.

    Two fetches in flight lock neighbouring jobs and may return in either
    order, so a single slot could start a later job first; with one slot,
    strict (priority, run_at, id) order is what a user expects (as from
    graphile-worker), and a second fetch would gain it nothing but a
    prefetch the first already does.
    """
    return 1 if concurrency == 1 else PIPELINES


class Wake(enum.IntFlag):
    """Why the fetcher was woken; several coalesce into one take."""

    SLOTS = enum.auto()  # a slot waits for a job, or the local queue ran low
    INSERTED = enum.auto()  # a jobs:insert notification
    WRITTEN = enum.auto()  # results of claimed jobs written: a named queue may be free
    SETTLED = enum.auto()  # a lease settled (it held plain jobs only: no queue freed)
    POLL = enum.auto()  # the poll interval passed: a notification may have been missed
    DUE = enum.auto()  # the earliest future job is due (the run_at timer)
    FREED = enum.auto()  # recovery freed the jobs of dead workers
    FETCHED = enum.auto()  # a fetch ended
    RETRY = enum.auto()  # the back-off after a failed fetch is over
    FENCE = enum.auto()  # cut off from the database: others may free our jobs
    LIFT = enum.auto()  # the database answers again
    STOP = enum.auto()


class Wakeups:
    """The mailbox every source of "look for jobs again" posts to.

    The sources hold bound methods of this object, never the fetcher, so a
    job's path and its wake-ups both run one way: into the fetcher.
    """

    __slots__ = ("_event", "_pending", "writes")

    def __init__(self) -> None:
        self._pending = Wake(0)
        self._event = asyncio.Event()
        #: Result writes so far (of claimed jobs or leases); run_once compares it.
        self.writes = 0

    @property
    def pending(self) -> Wake:
        """Reasons posted and not yet taken."""
        return self._pending

    def post(self, reason: Wake) -> None:
        self._pending |= reason
        self._event.set()

    def slots_hungry(self) -> None:
        self.post(Wake.SLOTS)

    def jobs_inserted(self, count: int) -> None:
        self.post(Wake.INSERTED)

    def results_written(self) -> None:
        self.writes += 1
        self.post(Wake.WRITTEN)

    def lease_settled(self) -> None:
        self.writes += 1
        self.post(Wake.SETTLED)

    def poll(self) -> None:
        self.post(Wake.POLL)

    def jobs_freed(self) -> None:
        self.post(Wake.FREED)

    def nudge(self) -> None:
        """Look now (the pool started, the listener connected)."""
        self.post(Wake.POLL)

    async def take(self) -> Wake:
        """The reasons posted since the last take (waits for at least one)."""
        await self._event.wait()
        self._event.clear()
        reasons, self._pending = self._pending, Wake(0)
        return reasons


class State(enum.Enum):
    IDLE = "idle"
    FETCHING = "fetching"
    STALE = "stale"
    BACKOFF = "backoff"
    FENCED = "fenced"
    STOPPING = "stopping"
    DRAINED = "drained"
    STOPPED = "stopped"


#: Every move the fetcher may make; anything else is a bug and raises.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.FETCHING, State.FENCED, State.DRAINED, State.STOPPED}),
    State.FETCHING: frozenset(
        {State.STALE, State.IDLE, State.BACKOFF, State.FENCED, State.STOPPING, State.STOPPED}
    ),
    State.STALE: frozenset(
        {State.FETCHING, State.IDLE, State.BACKOFF, State.FENCED, State.STOPPING, State.STOPPED}
    ),
    State.BACKOFF: frozenset({State.FETCHING, State.FENCED, State.STOPPING, State.STOPPED}),
    State.FENCED: frozenset({State.BACKOFF, State.STOPPING, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.DRAINED: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
}


class BatchSizer:
    """How many jobs to ask for: about ``HORIZON`` seconds of work at the recent pace.

    Big batches make a drain cheap (one statement and one commit for
    hundreds of jobs); but a pool whose jobs are slow must not take hundreds
    it will only start minutes later, while other pools idle (and, in claim
    mode, each job taken counts an attempt should the pool die). So the batch
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


class _InFlight(Record):
    """A fetch in flight and what it was started with."""

    __slots__ = ("wanted", "writes_at_start")

    def __init__(self, wanted: int, writes_at_start: int) -> None:
        self.wanted = wanted
        self.writes_at_start = writes_at_start


class Fetcher:
    """The state machine of one pool's fetching (see the module docstring)."""

    def __init__(
        self,
        *,
        cycle: FetchCycle,
        wakeups: Wakeups,
        dispatcher: dispatch.Dispatcher,
        busy: Callable[[], bool],
        concurrency: int,
        max_batch: int,
        pipelines: int,
        once: bool,
        events: EventEmitter,
        worker_id: str,
        log: logging.Logger,
    ) -> None:
        self._cycle = cycle
        self._wakeups = wakeups
        self._dispatcher = dispatcher
        self._busy = busy
        self._sizer = BatchSizer(concurrency, max_batch)
        self.pipelines = pipelines
        self._once = once
        self._events = events
        self._worker_id = worker_id
        self.log = log
        self.state = State.IDLE
        self._inflight: dict[asyncio.Task[Fetched], _InFlight] = {}
        self._ended: list[tuple[asyncio.Task[Fetched], _InFlight]] = []
        self._inflight_jobs = 0
        # Data the reasons leave behind (not states: they say *what* to fetch).
        self._more = False  # the last fetch was full: more jobs are probably due
        self._claim_queues = True  # a keyed or queued job may be runnable
        self._look_ahead = True  # something may have moved the earliest future run_at
        self._reclaim = False  # set in BACKOFF: give back what we may hold unseen
        self._retry_due = False
        self._failing = False
        self._delay = 0.05
        self._run_at_timer: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ transitions
    def _move(self, state: State) -> None:
        if state is self.state:
            return
        if state not in TRANSITIONS[self.state]:
            raise AssertionError(f"fetcher: {self.state.name} -> {state.name} is not allowed")
        self.state = state

    def describe(self) -> str:
        """The state and what it is waiting with, for a state dump (``SIGUSR1``)."""
        return (
            f"{self.state.name}, {len(self._inflight)} fetch(es) in flight "
            f"({self._inflight_jobs} jobs asked), more={self._more}, "
            f"writes={self._wakeups.writes}, pending wake-ups={self._wakeups.pending!r}"
        )

    def stop(self) -> None:
        """Stop fetching; fetches in flight finish, so the jobs they take come back."""
        self._wakeups.post(Wake.STOP)

    def fence(self) -> None:
        """Fetch nothing until :meth:`lift` (the heartbeat's fence)."""
        self._wakeups.post(Wake.FENCE)

    def lift(self) -> None:
        """The database answers again: give back what we dropped, then fetch."""
        self._wakeups.post(Wake.LIFT)

    async def run(self) -> State:
        """Fetch until stopped, or (``run_once``) until drained; returns the final state."""
        self._look()
        while self.state not in (State.STOPPED, State.DRAINED):
            self._absorb(await self._wakeups.take())
        for timer in (self._run_at_timer, self._retry_timer):
            if timer is not None:
                timer.cancel()
        return self.state

    def _absorb(self, reasons: Wake) -> None:
        if reasons & Wake.STOP:
            self._move(State.STOPPING if self._inflight else State.STOPPED)
        if reasons & Wake.FETCHED:
            ended, self._ended = self._ended, []
            for task, fetch in ended:
                self._fetch_ended(task, fetch)
        if self.state in (State.STOPPING, State.STOPPED, State.DRAINED):
            if self.state is State.STOPPING and not self._inflight:
                self._move(State.STOPPED)
            return
        if reasons & Wake.FENCE:
            self._move(State.FENCED)
        if reasons & Wake.LIFT and self.state is State.FENCED:
            self._move(State.BACKOFF)
            self._retry_due = True  # at once, giving back what the pool dropped
        if self.state is State.FENCED:
            return
        if reasons & Wake.RETRY:
            self._retry_due = True
        look = bool(reasons & (Wake.SLOTS | Wake.DUE | Wake.FREED))
        if reasons & (Wake.INSERTED | Wake.DUE | Wake.FREED):
            self._cycle.forget_resume()
            self._claim_queues = True
            self._look_ahead = True
        if reasons & Wake.INSERTED and not self._more:
            look = True
        if reasons & Wake.WRITTEN:
            self._claim_queues = True
        if reasons & (Wake.WRITTEN | Wake.SETTLED) and (not self._more or self._once):
            look = True
        if reasons & Wake.POLL:
            self._cycle.forget_resume()
            if not self._more:
                self._claim_queues = True
                self._look_ahead = True
                look = True
        if self.state is State.BACKOFF:
            if self._retry_due and not self._inflight:
                self._start(reclaim=True)
        elif look:
            self._look()

    def _look(self) -> None:
        """A reason to look for jobs: fetch now if there is room, else remember it."""
        if self.state in (State.IDLE, State.FETCHING, State.STALE):
            if (not self._inflight or self._may_add_fetch()) and self._start(reclaim=False):
                return
            if self._inflight:
                self._move(State.STALE)

    def _room(self) -> tuple[int, int]:
        """(batch size, how many jobs a fetch may bring now)."""
        d = self._dispatcher
        queued = d.queued()
        loop = asyncio.get_running_loop()
        batch = self._sizer.size(d.started, len(d.running), queued, loop.time())
        d.low_water = batch
        # Up to one batch queued locally plus one per fetch in flight.
        room = 2 * batch - queued - self._inflight_jobs + d.idle_slots()
        return batch, room

    def _may_add_fetch(self) -> bool:
        """Whether a second fetch may join the one in flight."""
        if len(self._inflight) >= self.pipelines:
            return False
        # Only while slots starve: otherwise a second fetch walks past the rows
        # the first is taking (server CPU spent on skipped rows) for no gain.
        return bool(self._dispatcher.idle_slots())

    def _start(self, *, reclaim: bool) -> bool:
        batch, room = self._room()
        if self._inflight and room < max(1, batch // 5):
            return False  # the fetch in flight brings nearly all there is room for
        if room <= 0:
            return False  # the local queue is full: a slot that finds it low asks again
        wanted = min(room, batch)
        claim_queues, self._claim_queues = self._claim_queues, False
        look_ahead = self._look_ahead
        if reclaim:
            self._retry_due = False
            claim_queues = True
        task = asyncio.get_running_loop().create_task(
            self._cycle.run(
                wanted, claim_queues=claim_queues, reclaim=reclaim, look_ahead=look_ahead
            )
        )
        fetch = _InFlight(wanted, self._wakeups.writes)
        self._inflight[task] = fetch
        self._inflight_jobs += wanted
        task.add_done_callback(self._on_task_done)
        self._move(State.FETCHING)
        return True

    def _on_task_done(self, task: asyncio.Task[Fetched]) -> None:
        self._ended.append((task, self._inflight[task]))
        self._wakeups.post(Wake.FETCHED)

    def _fetch_ended(self, task: asyncio.Task[Fetched], fetch: _InFlight) -> None:
        del self._inflight[task]
        self._inflight_jobs -= fetch.wanted
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or error is not None:
            self._claim_queues = True  # the claim may not have run; its jobs are still due
            if error is not None and not isinstance(error, DB_ERRORS):
                raise error  # a bug: the pool's watchdog stops loudly
            if self.state in (State.STOPPING, State.STOPPED, State.FENCED):
                return
            if not self._failing:
                self._failing = True
                self.log.warning("fetching jobs failed (%s); retrying", error)
                self._events.emit("worker:getJob:error", {"error": error})
            self._move(State.BACKOFF)
            self._retry_due = False
            if self._retry_timer is not None:
                self._retry_timer.cancel()
            self._retry_timer = asyncio.get_running_loop().call_later(
                self._delay, self._wakeups.post, Wake.RETRY
            )
            self._delay = min(self._delay * 2, 5.0)
            return
        result = task.result()
        if self._failing:
            self._failing = False
            self._delay = 0.05
            self.log.warning("fetching jobs works again")
        if result.queues_full:
            self._claim_queues = True
        self._more = result.got >= fetch.wanted
        self._dispatcher.more = self._more
        if not self._more:
            self._look_ahead = False
            if result.next_due is not None:
                self._set_run_at_timer(result.next_due)
        if not result.got:
            self._events.emit("worker:getJob:empty", {"worker_id": self._worker_id})
        if self.state in (State.STOPPING, State.STOPPED, State.BACKOFF, State.FENCED):
            return
        if self._inflight:
            if self._more and self._dispatcher.queued() <= self._dispatcher.low_water:
                self._look()
            return
        # The last fetch in flight has ended.
        if self.state is State.STALE:
            self._move(State.FETCHING)  # so that a fetch that cannot start leaves IDLE
            if not self._start(reclaim=False):
                self._move(State.IDLE)
            return
        if self._more and self._start(reclaim=False):
            return
        self._move(State.IDLE)
        if self._once:
            # Even when this fetch brought jobs: it hands them to the slots before
            # its last statement, so they may have run and been written (and the
            # fetch that write started ended empty) while it was still in flight.
            self._check_drained(fetch)

    def _check_drained(self, fetch: _InFlight) -> None:
        """run_once, when the last fetch in flight has ended: stop when nothing is
        due, in hand or being written.

        A result still being written may free a named queue whose next job is
        then due, so the pool only stops after a fetch that started once every
        result was written came back empty. A fetch that brought jobs never
        stops the pool here: its jobs were either written since it began (the
        counts differ: look again) or are still busy (their write wakes us).
        """
        if self._busy():
            return  # a finishing job, flush or settle wakes us again
        if fetch.writes_at_start != self._wakeups.writes:
            self._look()  # something was written meanwhile: look once more
            return
        self._move(State.DRAINED)

    def _set_run_at_timer(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, 0.0) + 0.001
        timer = self._run_at_timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._run_at_timer = loop.call_at(when, self._run_at_due)

    def _run_at_due(self) -> None:
        self._run_at_timer = None
        self._wakeups.post(Wake.DUE)


__all__ = ["PIPELINES", "TRANSITIONS", "BatchSizer", "Fetcher", "State", "Wake", "Wakeups"]
