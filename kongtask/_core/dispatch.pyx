"""Compiled twin of ``kongtask._core.dispatch_py``: local queue, slots, leases.

Same behaviour, same names; see the pure twin for what each piece is for.
What the compiler buys on this per-job path: the slot loop is a C coroutine,
jobs and leases are C structs read without attribute lookups (``Job`` is
declared in decode.pxd), the local queue is a list with a head index instead
of a deque's method calls, and the event checks are dict lookups in C.
"""

import asyncio
import inspect

from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdlib cimport free, malloc

from kongtask._core.decode cimport Job

__all__ = ["Dispatcher", "Helpers", "Lease", "Results", "TaskEntry", "ids_literal"]

from kongtask._core.common import YIELD_EVERY, Helpers, TaskEntry

cdef int _YIELD_EVERY = YIELD_EVERY
cdef object _new_object = object.__new__

cdef object _CancelledError = asyncio.CancelledError
cdef object _isawaitable = inspect.isawaitable
cdef tuple _REraise = (KeyboardInterrupt, SystemExit)
cdef object _get_running_loop = asyncio.get_running_loop


cdef Py_ssize_t _write_int(char* out, long long value) noexcept:
    """Writes ``value`` in decimal at ``out``; returns the characters written."""
    cdef char tmp[24]
    cdef Py_ssize_t n = 0, i
    cdef unsigned long long magnitude
    if value < 0:
        magnitude = <unsigned long long>(-(value + 1)) + 1
    else:
        magnitude = <unsigned long long>value
    while True:
        tmp[n] = <char>(48 + magnitude % 10)
        n += 1
        magnitude //= 10
        if magnitude == 0:
            break
    i = 0
    if value < 0:
        out[0] = 45  # minus sign
        i = 1
    while n:
        n -= 1
        out[i] = tmp[n]
        i += 1
    return i


def ids_literal(ids):
    """The PostgreSQL array literal of job ids (``{1,2,3}``), sent as text and cast
    to ``bigint[]`` by the statement (see the pure twin for why)."""
    cdef list seq = ids if type(ids) is list else list(ids)
    cdef Py_ssize_t i, n = len(seq), size = 1
    cdef int overflow
    cdef long long value
    cdef object item
    cdef char* buf = <char*>malloc(n * 21 + 2)
    if buf == NULL:
        raise MemoryError()
    try:
        buf[0] = 123  # {
        for i in range(n):
            item = seq[i]
            if type(item) is not int:
                raise TypeError(f"ids[{i}] is {type(item).__name__}, not int")
            value = PyLong_AsLongLongAndOverflow(item, &overflow)
            if overflow:
                raise ValueError(f"ids[{i}] is out of bigint range")
            if i:
                buf[size] = 44  # ,
                size += 1
            size += _write_int(buf + size, value)
        buf[size] = 125  # }
        return PyUnicode_DecodeASCII(buf, size + 1, NULL)
    finally:
        free(buf)


cdef class _YieldOnce:
    """Awaitable that yields to the event loop exactly once (a bare ``yield``)."""

    cdef bint _done

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        self._done = True
        return None


cdef class Lease:
    """A fetched batch of jobs whose rows stay locked by their fetch transaction.

    See the pure twin: nothing is written for a leased job until the batch
    settles; ``open`` turns False once settling starts.
    """

    cdef public list jobs
    cdef public list ctids
    cdef public Py_ssize_t unfinished
    cdef public list done
    cdef public list failed
    cdef public list dropped
    cdef public bint open
    cdef public bint lost
    cdef object _on_finished
    cdef public object conn
    cdef public object timer

    def __init__(self, list jobs, on_finished):
        self.jobs = jobs
        self.ctids = []
        self.unfinished = len(jobs)
        self.done = []
        self.failed = []
        self.dropped = []
        self.open = True
        self.lost = False
        self._on_finished = on_finished
        self.conn = None
        self.timer = None

    cpdef succeeded(self, job_id):
        """The job's handler succeeded: its row is deleted when the lease settles."""
        self.done.append(job_id)
        self._one_finished()

    cpdef failed_with(self, job_id, message, payload_text):
        """The job failed: attempt, message and backoff are written when it settles."""
        self.failed.append((job_id, message, payload_text))
        self._one_finished()

    cpdef drop(self, job_id):
        """The job was never started (shutdown): the commit simply releases it."""
        self.dropped.append(job_id)
        self._one_finished()

    cdef inline void _one_finished(self) except *:
        self.unfinished -= 1
        if self.unfinished == 0 and self.open:
            self._on_finished(self)

    def unfinished_ids(self):
        """Ids with no outcome yet: running, or waiting in the local queue."""
        cdef set finished = set(self.done)
        cdef tuple entry
        for entry in self.failed:
            finished.add(entry[0])
        finished.update(self.dropped)
        return [job.id for job in self.jobs if job.id not in finished]


cdef inline object _new_helpers(object context, object job):
    """A ``common.Helpers`` without the Python-level ``__init__`` call."""
    helpers = _new_object(Helpers)
    helpers._context = context
    helpers.job = job
    helpers._logger = None
    return helpers


cdef class Results:
    """Where a job's outcome goes: to its lease while that is open, else to the
    completer (see the pure twin)."""

    cdef object _complete
    cdef object _fail

    def __init__(self, completer):
        self._complete = completer.complete
        self._fail = completer.fail

    cpdef succeed(self, Job job):
        """The handler returned: the row is deleted (when the lease settles, or
        by the completer's next write)."""
        cdef object lease = job.lease
        if lease is not None and (<Lease>lease).open:
            (<Lease>lease).succeeded(job.id)
        else:
            self._complete(job.id, job.ctid)

    cpdef fail(self, Job job, message, payload_text):
        """The handler failed: attempt, message and backoff are written."""
        cdef object lease = job.lease
        if lease is not None and (<Lease>lease).open:
            (<Lease>lease).failed_with(job.id, message, payload_text)
        else:
            self._fail(job.id, message, payload_text)


cdef class Dispatcher:
    """The local queue and the slot loop of one pool (see the pure twin)."""

    cdef public dict tasks
    cdef dict _entries  # the tasks as plain tuples (handler, is_async, timeout)
    cdef public dict listeners
    cdef public object emit
    cdef public Results results
    cdef public object outcomes
    cdef public object context
    cdef object _run_in_thread
    cdef public object request_fetch
    cdef public str worker_id
    cdef public Py_ssize_t low_water
    # The local queue: jobs live in _local[_head:]; the list is reset when drained.
    cdef list _local
    cdef Py_ssize_t _head
    cdef public object waiters
    cdef public dict running
    cdef public Py_ssize_t started
    cdef public bint more
    cdef public bint stopping
    cdef int _streak

    def __init__(self, *, dict tasks, events, Results results, outcomes, context, request_fetch,
                 str worker_id, Py_ssize_t low_water):
        from collections import deque

        self.tasks = tasks
        self._entries = {name: tuple(entry) for name, entry in tasks.items()}
        self.listeners = events.listeners
        self.emit = events.emit
        self.results = results
        self.outcomes = outcomes
        self.context = context
        self._run_in_thread = context.run_in_thread
        self.request_fetch = request_fetch
        self.worker_id = worker_id
        self.low_water = low_water
        self._local = []
        self._head = 0
        self.waiters = deque()
        self.running = {}
        self.started = 0
        self.more = False
        self.stopping = False
        self._streak = 0

    # ------------------------------------------------------------ local queue
    @property
    def local(self):
        """The jobs waiting in the local queue, oldest first (a copy)."""
        return self._local[self._head:]

    cpdef Py_ssize_t queued(self):
        """Jobs waiting in the local queue."""
        return len(self._local) - self._head

    def idle_slots(self):
        """Slots waiting for a job."""
        return len(self.waiters)

    def deliver(self, list jobs):
        """Hand fetched jobs to idle slots first, then queue the rest in order."""
        cdef Py_ssize_t i = 0, n = len(jobs)
        if self.stopping:
            self._local.extend(jobs)  # given back by the shutdown, never started
            return
        waiters = self.waiters
        while i < n and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(jobs[i])
                i += 1
        if i == 0:
            self._local.extend(jobs)
        elif i < n:
            self._local.extend(jobs[i:])

    def take_unstarted(self):
        """Empty the local queue (shutdown) and return what it held."""
        jobs = self._local[self._head:]
        self._local = []
        self._head = 0
        return jobs

    def held_ids(self):
        """Ids of the jobs this pool holds in memory: running or queued locally."""
        cdef list ids = list(self.running)
        cdef Py_ssize_t i
        for i in range(self._head, len(self._local)):
            ids.append((<Job>self._local[i]).id)
        return ids

    def release_waiters(self):
        """Wake idle slots with nothing, so that they return (shutdown)."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    # ------------------------------------------------------------------ slots
    cdef inline object _pop_local(self):
        """The oldest queued job, or None when the local queue is empty."""
        cdef list local = self._local
        cdef Py_ssize_t n = len(local)
        if self._head >= n:
            return None
        job = local[self._head]
        local[self._head] = None
        self._head += 1
        if n - self._head == self.low_water and self.more:
            self.request_fetch()
        if self._head == n and self._local is local:
            self._local = []
            self._head = 0
        return job

    async def _wait_for_job(self):
        if self.stopping:
            return None
        waiter = _get_running_loop().create_future()
        self.waiters.append(waiter)
        self.request_fetch()
        return await waiter

    async def slot(self):
        """Run jobs until the pool stops; cancelled = forceful shutdown."""
        cdef dict running = self.running
        cdef dict tasks = self._entries
        cdef dict listeners = self.listeners
        cdef object outcomes = self.outcomes
        cdef Results results = self.results
        cdef Job job
        cdef tuple entry
        cdef object found, job_id, name, helpers, call, result, replacement
        while True:
            found = self._pop_local()
            if found is None:
                found = await self._wait_for_job()
                if found is None:
                    return
            else:
                self._streak += 1
                if self._streak >= _YIELD_EVERY:
                    self._streak = 0
                    await _YieldOnce()
            job = <Job?>found
            if job.lease is not None and (<Lease>job.lease).lost:
                (<Lease>job.lease).drop(job.id)  # its rows are free: never start it
                continue
            self.started += 1
            job_id = job.id
            running[job_id] = job
            replacement = None
            try:
                job.ensure_payload()  # parsed just in time: see decode.Job
                if job._error is not None:
                    raise ValueError(job._error)
                name = job.task_identifier
                entry = <tuple>tasks[name]  # handler, is_async, timeout
                helpers = _new_helpers(self.context, job)
                if "job:start" in listeners:
                    self.emit("job:start", {"job": job, "worker_id": self.worker_id})
                if entry[1]:
                    call = entry[0](job._value, helpers)
                else:
                    call = self._run_in_thread(entry[0], job._value, helpers)
                if entry[2] is None:
                    result = await call
                else:
                    result = await outcomes.with_timeout(call, entry[2], name)
                if result is not None:
                    if _isawaitable(result):
                        result = await result
                    if type(result) is list and isinstance(job._value, list):
                        replacement = await outcomes.batch_outcome(job, result)
            except _CancelledError:
                del running[job_id]
                outcomes.failed(job, None, True)
                return
            except BaseException as exc:
                del running[job_id]
                outcomes.failed(job, exc, False)
                if isinstance(exc, _REraise):
                    raise
                continue
            del running[job_id]
            if replacement is not None:
                outcomes.replaced(job, replacement)
                continue
            results.succeed(job)
            if "job:success" in listeners:
                self.emit("job:success", {"job": job, "worker_id": self.worker_id})
            if "job:complete" in listeners:
                self.emit("job:complete", {"job": job, "error": None})
