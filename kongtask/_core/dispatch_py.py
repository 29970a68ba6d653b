"""Pure-Python twin of ``kongtask._core.dispatch``: local queue, slots, leases.

Everything here runs once per job, which is why it lives in ``_core`` with a
compiled twin (docs/architecture.md): a fetched job waits in the local queue,
one of ``concurrency`` slot coroutines takes it, runs its handler and routes
the outcome to the job's :class:`Lease` (while its fetch transaction is still
open) or to the completer (once the job was claimed with a row update).

The module knows no database: the worker hands it callables for everything
that is not bookkeeping (what helpers do, running sync handlers in a thread,
timeouts, formatting failures, batch-job outcomes, asking for a fetch).
"""

from __future__ import annotations

import asyncio
import inspect
import types
from collections import deque
from collections.abc import Callable
from typing import Any

from .common import YIELD_EVERY, Helpers, TaskEntry

__all__ = ["Dispatcher", "Helpers", "Lease", "Results", "TaskEntry", "ids_literal"]

_BIGINT_MIN = -(2**63)
_BIGINT_MAX = 2**63 - 1


def ids_literal(ids: list[int]) -> str:
    """The PostgreSQL array literal of job ids (``{1,2,3}``), sent as text and cast
    to ``bigint[]`` by the statement.

    One text parameter instead of an array: asyncpg encodes an array element
    by element (with an abstract-class check on each, a few percent of the
    worker's CPU per completed job) and looks the array type up on every new
    connection; PostgreSQL parses the literal in C.
    """
    if not ids:
        return "{}"
    if set(map(type, ids)) == {int} and min(ids) >= _BIGINT_MIN and max(ids) <= _BIGINT_MAX:
        return "{" + ",".join(map(str, ids)) + "}"
    for index, value in enumerate(ids):
        if type(value) is not int:
            raise TypeError(f"ids[{index}] is {type(value).__name__}, not int")
        if not _BIGINT_MIN <= value <= _BIGINT_MAX:
            raise ValueError(f"ids[{index}] is out of bigint range")
    raise AssertionError("unreachable")  # pragma: no cover


@types.coroutine
def _yield_to_loop() -> Any:
    """One bare yield: asyncio reschedules the task on the next loop turn."""
    yield


class Lease:
    """A fetched batch of jobs whose rows stay locked by their fetch transaction.

    Nothing is written for a leased job until the batch settles: success
    deletes the row, failure records it, and jobs still unfinished at the
    lease's deadline are claimed the classic way (attempts + 1, locked_by).
    ``open`` turns False once settling starts; outcomes that arrive later go
    to the completer, because those jobs are claimed by then.
    """

    __slots__ = (
        "_on_finished",
        "conn",
        "ctids",
        "done",
        "dropped",
        "failed",
        "jobs",
        "lost",
        "open",
        "timer",
        "unfinished",
    )

    def __init__(self, jobs: list[Any], on_finished: Callable[[Lease], None]) -> None:
        self.jobs = jobs
        #: The rows' addresses (ctid as text), parallel to ``jobs``.
        self.ctids: list[str] = []
        self.unfinished = len(jobs)
        self.done: list[int] = []
        self.failed: list[tuple[int, str, str | None]] = []
        self.dropped: list[int] = []
        self.open = True
        #: Its connection is gone: its rows are free, so its unstarted jobs are
        #: dropped instead of started (another pool may be running them now).
        self.lost = False
        self._on_finished = on_finished
        self.conn: Any = None
        self.timer: Any = None

    def succeeded(self, job_id: int) -> None:
        """The job's handler succeeded: its row is deleted when the lease settles."""
        self.done.append(job_id)
        self._one_finished()

    def failed_with(self, job_id: int, message: str, payload_text: str | None) -> None:
        """The job failed: attempt, message and backoff are written when it settles."""
        self.failed.append((job_id, message, payload_text))
        self._one_finished()

    def drop(self, job_id: int) -> None:
        """The job was never started (shutdown): the commit simply releases it."""
        self.dropped.append(job_id)
        self._one_finished()

    def _one_finished(self) -> None:
        self.unfinished -= 1
        if self.unfinished == 0 and self.open:
            self._on_finished(self)

    def unfinished_ids(self) -> list[int]:
        """Ids with no outcome yet: running, or waiting in the local queue."""
        finished = set(self.done)
        finished.update(entry[0] for entry in self.failed)
        finished.update(self.dropped)
        return [job.id for job in self.jobs if job.id not in finished]


class Results:
    """Where a job's outcome goes: to its lease while that is open, else to the
    completer (the job was claimed, at fetch or when its lease settled)."""

    __slots__ = ("_complete", "_fail")

    def __init__(self, completer: Any) -> None:
        self._complete = completer.complete
        self._fail = completer.fail

    def succeed(self, job: Any) -> None:
        """The handler returned: the row is deleted (when the lease settles, or
        by the completer's next write)."""
        lease = job.lease
        if lease is not None and lease.open:
            lease.succeeded(job.id)
        else:
            self._complete(job.id, job.ctid)

    def fail(self, job: Any, message: str, payload_text: str | None) -> None:
        """The handler failed: attempt, message and backoff are written."""
        lease = job.lease
        if lease is not None and lease.open:
            lease.failed_with(job.id, message, payload_text)
        else:
            self._fail(job.id, message, payload_text)


class Dispatcher:
    """The local queue and the slot loop of one pool.

    ``deliver`` puts fetched jobs in the local queue (or straight into the
    hands of idle slots); ``concurrency`` coroutines running :meth:`slot` take
    them in order. A success goes to ``results``; anything else (a failure, a
    timeout, a batch job's partial result) to ``outcomes``, which formats and
    reports it and then hands it to ``results`` as well: a job's path runs one
    way. ``request_fetch`` is called when the local queue falls to
    ``low_water`` while ``more`` says the last fetch was full, and whenever a
    slot finds the queue empty.

    ``outcomes`` provides ``failed(job, exc, cancelled)``,
    ``batch_outcome(job, result)``, ``replaced(job, replacement)`` and
    ``with_timeout(call, limit, task)``; ``context`` (the pool's
    ``HelperContext``) ``run_in_thread(handler, payload, helpers)`` for sync
    handlers and what every job's :class:`Helpers` share.
    """

    def __init__(
        self,
        *,
        tasks: dict[str, TaskEntry],
        events: Any,
        results: Results,
        outcomes: Any,
        context: Any,
        request_fetch: Callable[[], None],
        worker_id: str,
        low_water: int,
    ) -> None:
        self.tasks = tasks
        self.listeners: dict[str, Any] = events.listeners
        self.emit: Callable[[str, dict[str, Any]], None] = events.emit
        self.results = results
        self.outcomes = outcomes
        self.context = context
        self.request_fetch = request_fetch
        self.worker_id = worker_id
        self.low_water = low_water
        self.local: deque[Any] = deque()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.running: dict[int, Any] = {}
        self.started = 0
        self.more = False
        self.stopping = False
        self._streak = 0

    # ------------------------------------------------------------ local queue
    def queued(self) -> int:
        """Jobs waiting in the local queue."""
        return len(self.local)

    def idle_slots(self) -> int:
        """Slots waiting for a job."""
        return len(self.waiters)

    def deliver(self, jobs: list[Any]) -> None:
        """Hand fetched jobs to idle slots first, then queue the rest in order."""
        local = self.local
        if self.stopping:
            local.extend(jobs)  # given back by the shutdown, never started
            return
        waiters = self.waiters
        for job in jobs:
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(job)
                    break
            else:
                local.append(job)

    def take_unstarted(self) -> list[Any]:
        """Empty the local queue (shutdown) and return what it held."""
        jobs = list(self.local)
        self.local.clear()
        return jobs

    def held_ids(self) -> list[int]:
        """Ids of the jobs this pool holds in memory: running or queued locally."""
        return [*self.running, *(job.id for job in self.local)]

    def release_waiters(self) -> None:
        """Wake idle slots with nothing, so that they return (shutdown)."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    # ------------------------------------------------------------------ slots
    async def _next_job(self) -> Any:
        local = self.local
        if local:
            job = local.popleft()
            if len(local) == self.low_water and self.more:
                self.request_fetch()
            self._streak += 1
            if self._streak >= YIELD_EVERY:
                self._streak = 0
                await _yield_to_loop()
            return job
        if self.stopping:
            return None
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self.request_fetch()
        return await waiter

    async def slot(self) -> None:
        """Run jobs until the pool stops; cancelled = forceful shutdown."""
        running = self.running
        tasks = self.tasks
        listeners = self.listeners
        outcomes = self.outcomes
        while True:
            job = await self._next_job()
            if job is None:
                return
            lease = job.lease
            if lease is not None and lease.lost:
                lease.drop(job.id)
                continue
            self.started += 1
            job_id = job.id
            running[job_id] = job
            replacement = None
            try:
                if job.payload_error is not None:  # parses the payload: see decode.Job
                    raise ValueError(job.payload_error)
                payload = job.payload
                name = job.task_identifier
                entry = tasks[name]
                helpers = Helpers(self.context, job)
                if "job:start" in listeners:
                    self.emit("job:start", {"job": job, "worker_id": self.worker_id})
                if entry.is_async:
                    call = entry.handler(payload, helpers)
                else:
                    call = self.context.run_in_thread(entry.handler, payload, helpers)
                if entry.timeout is None:
                    result = await call
                else:
                    result = await outcomes.with_timeout(call, entry.timeout, name)
                if result is not None:
                    if inspect.isawaitable(result):
                        result = await result
                    if result.__class__ is list and isinstance(job.payload, list):
                        replacement = await outcomes.batch_outcome(job, result)
            except asyncio.CancelledError:
                del running[job_id]
                outcomes.failed(job, None, True)
                return
            except BaseException as exc:
                del running[job_id]
                outcomes.failed(job, exc, False)
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                continue
            del running[job_id]
            if replacement is not None:
                outcomes.replaced(job, replacement)
                continue
            self.results.succeed(job)
            if "job:success" in listeners:
                self.emit("job:success", {"job": job, "worker_id": self.worker_id})
            if "job:complete" in listeners:
                self.emit("job:complete", {"job": job, "error": None})
