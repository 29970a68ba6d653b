"""What both twins of each ``_core`` module share, written once.

The twins (``NAME.pyx`` and ``NAME_py.py``) must agree on their row shapes,
limits and messages to the letter, and plain classes with nothing to compile
gain nothing from a second copy. So those live here, and both twins import
them. Only code whose speed matters is written twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

# ------------------------------------------------------------------ decode
#: Columns of a job row in the order ``decode_jobs`` reads them
#: (``queries.jobs._JOB_FIELDS`` selects them so).
JOB_COLUMNS: tuple[str, ...] = (
    "id",
    "queue_name",
    "task_identifier",
    "payload",
    "priority",
    "run_at",
    "attempts",
    "max_attempts",
    "last_error",
    "created_at",
    "updated_at",
    "key",
    "locked_at",
    "locked_by",
    "revision",
    "flags",
)

#: Columns of a plain job's row (``Queries.claim_plain`` and ``lease_plain``):
#: the job columns that differ from row to row. A plain job has no queue and no
#: key, and the worker knows its task names, its own id and when it fetched
#: the batch, so those are filled in instead of being sent and decoded once per
#: row. The last column, the row's ``ctid`` as text, becomes ``Job.ctid``: the
#: address a success is deleted by (no primary-key probe).
LEASED_COLUMNS: tuple[str, ...] = (
    "id",
    "task_id",
    "payload",
    "priority",
    "run_at",
    "attempts",
    "max_attempts",
    "last_error",
    "created_at",
    "updated_at",
    "revision",
    "flags",
    "ctid",
)

#: Columns of a stored job row as ``add_jobs`` returns it: the table's own
#: columns, with task and queue as ids (the client names them from a cache).
STORED_COLUMNS: tuple[str, ...] = ("id", "job_queue_id", "task_id", *JOB_COLUMNS[3:])

#: Deepest nesting handed to the stdlib JSON fallback: it recurses per level,
#: and its limit would otherwise depend on the caller's stack depth.
MAX_FALLBACK_DEPTH = 512

BAD_JSON = "payload is not valid JSON: "
TOO_DEEP = "payload JSON is nested too deeply to decode"
BAD_FLAGS = "flags is not a JSON object: "

# ---------------------------------------------------------------- dispatch
#: Jobs a slot runs back to back before it lets the event loop turn. Handlers
#: that never suspend would otherwise run the whole local queue in one go,
#: starving the fetch and the result writes that should overlap with them.
YIELD_EVERY = 16


class TaskEntry(NamedTuple):
    """What a slot needs to run one task: its handler, how to call it, its timeout.

    A tuple, so that the compiled slot loop reads its fields by position in C.
    """

    handler: Callable[..., Any]
    is_async: bool
    timeout: float | None


class Helpers:
    """What a handler gets besides its payload: its job, a logger, the client.

    Built for each job, so it holds two references; everything else is the
    pool's HelperContext (kongtask.helpers). ``add_job``/``add_jobs`` use the
    worker's pool (the schema's functions, so notifications and job keys
    behave as for any client). ``abort_signal`` is set when the pool shuts
    down forcefully: long handlers should watch it.
    """

    __slots__ = ("_context", "_logger", "job")

    def __init__(self, context: Any, job: Any) -> None:
        self._context = context
        self.job = job
        self._logger: Any = None

    @property
    def abort_signal(self) -> Any:
        """Set when the pool shuts down forcefully."""
        return self._context.abort_signal

    @property
    def worker_id(self) -> str:
        """The id of the pool running this job (what ``locked_by`` says)."""
        return str(self._context.worker_id)

    @property
    def loop(self) -> Any:
        """The pool's event loop (for sync handlers that need to reach it)."""
        return self._context.loop

    @property
    def logger(self) -> Any:
        """A logger tagged with this job (created on first use: most jobs never log)."""
        if self._logger is None:
            self._logger = self._context.job_logger(self.job)
        return self._logger

    async def add_job(self, identifier: str, payload: Any = None, **options: Any) -> Any:
        """Add a job (same options as ``WorkerUtils.add_job``)."""
        return await self._context.utils.add_job(identifier, payload, **options)

    async def add_jobs(self, specs: Any, **options: Any) -> Any:
        """Add many jobs in one statement (see ``WorkerUtils.add_jobs``)."""
        return await self._context.utils.add_jobs(specs, **options)

    async def with_pg_client(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``fn`` with a connection borrowed from the worker's pool."""
        return await self._context.with_pg_client(fn)

    def run_sync(self, awaitable: Awaitable[Any], timeout: float | None = None) -> Any:
        """From a sync handler (in a thread), run a helper coroutine on the loop and wait."""
        return self._context.run_sync(awaitable, timeout)


# ---------------------------------------------------------------- schedule
#: Longest gap between two fires of an expression that can fire at all, under
#: graphile-worker's OR rule: every allowed month holds every weekday within
#: days 1-28, and every day 1-28, 30 and 31 recurs each year, so only "the 29th
#: of February alone" waits across years, at most 8 (2096-02-29 -> 2104-02-29,
#: 2100 not being a leap year). A search that passes this many years beyond its
#: start has met an expression that cannot fire (which parse already flags).
HORIZON_YEARS = 8

CRON_FIELD_NAMES: tuple[str, ...] = ("minute", "hour", "day of month", "month", "day of week")
CRON_EXPECTED = "expected N, A-B, *, */S, A-B/S or N/S"
