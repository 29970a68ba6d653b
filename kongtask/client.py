"""Adding jobs and administering the queue: :class:`WorkerUtils` and friends.

The same class serves users (``async with WorkerUtils(dsn)``) and task
handlers (``helpers.add_job`` is a WorkerUtils bound to the worker's pool),
so there is one implementation of every client operation.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Literal, TypeAlias

import asyncpg

from . import migrate as _migrate
from ._core import decode, dispatch, payload
from .config import resolve_schema
from .db import create_pool, mask_dsn, resolve_dsn, schema_missing
from .errors import InvalidJobSpec
from .gcpause import paused_gc
from .queries import Queries

Job = decode.Job
JobSpec = payload.JobSpec
JobKeyMode = Literal["replace", "preserve_run_at", "unsafe_dedupe"]
CleanupTask = Literal["GC_TASK_IDENTIFIERS", "GC_JOB_QUEUES", "DELETE_PERMAFAILED_JOBS"]
CLEANUP_TASKS: tuple[CleanupTask, ...] = (
    "GC_TASK_IDENTIFIERS",
    "GC_JOB_QUEUES",
    "DELETE_PERMAFAILED_JOBS",
)

# Check constraints of the schema, mapped to the argument a user would have
# got wrong, for the rare value our own validation lets through.
_CONSTRAINT_FIELDS = {
    "jobs_key_check": "job_key",
    "jobs_max_attempts_check": "max_attempts",
    "job_queues_queue_name_check": "queue_name",
    "tasks_identifier_check": "identifier",
}

#: What the utils run statements on: their own pool, or a pool or connection lent to them.
Executor: TypeAlias = "asyncpg.Pool | asyncpg.Connection"


@contextmanager
def _user_errors(schema: str) -> Iterator[None]:
    """Re-raise a database rejection of user input as the kongtask error naming the field.

    A schema never migrated becomes :class:`SchemaMissing`, naming it and the fix.
    """
    try:
        yield
    except asyncpg.PostgresError as exc:
        missing = schema_missing(exc, schema)
        if missing is not None:
            raise missing from None
        translated = _translate(exc)
        if translated is exc:
            raise
        raise translated from None


def _translate(exc: asyncpg.PostgresError) -> Exception:
    """A database rejection of user input, as the kongtask error naming the field."""
    constraint = getattr(exc, "constraint_name", None)
    if constraint in _CONSTRAINT_FIELDS:
        return InvalidJobSpec(_CONSTRAINT_FIELDS[constraint], str(exc))
    if getattr(exc, "sqlstate", None) == "GWBKM":
        return InvalidJobSpec("job_key_mode", str(exc))
    if isinstance(exc, asyncpg.DataError | asyncpg.InvalidTextRepresentationError):
        return InvalidJobSpec("specs", str(exc))
    return exc


#: The aware datetimes asyncpg sends as PostgreSQL's ``-infinity`` and ``infinity``.
_MIN_UTC = datetime.min.replace(tzinfo=timezone.utc)
_MAX_UTC = datetime.max.replace(tzinfo=timezone.utc)


def _storable_run_at(run_at: datetime | None) -> datetime | None:
    """``run_at`` as the aware datetime to bind, refused unless PostgreSQL stores it as is.

    asyncpg binds Python's smallest and largest datetimes as ``-infinity`` and
    ``infinity`` (a job that would then break ``kongtask jobs`` and the metrics),
    and a time whose UTC value falls outside Python's range fails inside asyncpg
    with an error that names only ``$4``. Both are refused here, by name.
    """
    aware = payload.encode_run_at(run_at)
    if aware is None:
        return None
    try:
        utc = aware.astimezone(timezone.utc)
    except OverflowError:
        utc = None
    if utc is None or utc <= _MIN_UTC or utc >= _MAX_UTC:
        raise InvalidJobSpec(
            "run_at",
            f"{aware.isoformat()} is outside the times kongtask can store "
            "(after 0001-01-01T00:00:00Z and before 9999-12-31T23:59:59.999999Z)",
        )
    return aware


_TASK_ID = operator.itemgetter(decode.STORED_COLUMNS.index("task_id"))
_QUEUE_ID = operator.itemgetter(decode.STORED_COLUMNS.index("job_queue_id"))


class WorkerUtils:
    """Client for one schema: add jobs, migrate, and the admin functions.

    Pass a DSN (or nothing: ``DATABASE_URL`` / ``PG*``) and the utils own a
    small pool, closed on exit; pass an ``asyncpg.Pool`` or ``Connection`` and
    they borrow it, never closing it.
    """

    def __init__(
        self,
        dsn_or_pool: str | Executor | None = None,
        *,
        schema: str | None = None,
        max_pool_size: int = 4,
        prepared_statements: bool = True,
    ) -> None:
        self.schema = resolve_schema(schema)
        self.queries = Queries(self.schema)
        self._executor: Executor | None = None
        self._owns_pool = False
        self._dsn: str | None = None
        self._max_pool_size = max_pool_size
        self._prepared_statements = prepared_statements
        # Task and queue ids never change their names (a deleted task or queue
        # comes back with a new id), so they are learnt once and kept.
        self._task_names: dict[int, str] = {}
        self._queue_names: dict[int, str] = {}
        if isinstance(dsn_or_pool, asyncpg.Pool | asyncpg.Connection):
            self._executor = dsn_or_pool
        else:
            self._dsn = resolve_dsn(dsn_or_pool)

    def __repr__(self) -> str:
        where = "borrowed pool" if not self._owns_pool and self._executor else mask_dsn(self._dsn)
        return f"<WorkerUtils schema={self.schema!r} {where}>"

    async def __aenter__(self) -> WorkerUtils:
        await self._ensure()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _ensure(self) -> Executor:
        if self._executor is None:
            self._executor = await create_pool(
                self._dsn,
                min_size=1,
                max_size=self._max_pool_size,
                prepared_statements=self._prepared_statements,
            )
            self._owns_pool = True
        return self._executor

    async def close(self) -> None:
        """Close the pool if these utils opened it."""
        if self._owns_pool and isinstance(self._executor, asyncpg.Pool):
            await self._executor.close()
            self._executor = None
            self._owns_pool = False

    async def _fetch_jobs(self, sql: str, *args: Any) -> list[Job]:
        executor = await self._ensure()
        with _user_errors(self.schema):
            rows = await executor.fetch(sql, *args)
        return decode.decode_jobs(rows)

    # ------------------------------------------------------------ migrations
    async def migrate(self) -> _migrate.MigrationResult:
        """Install the schema if it is missing (see :mod:`kongtask.migrate`)."""
        executor = await self._ensure()
        if isinstance(executor, asyncpg.Pool):
            async with executor.acquire() as conn:
                return await _migrate.migrate(conn, self.schema)
        return await _migrate.migrate(executor, self.schema)

    # ----------------------------------------------------------- adding jobs
    async def add_job(
        self,
        identifier: str,
        payload_value: Any = None,
        *,
        queue_name: str | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        job_key: str | None = None,
        job_key_mode: JobKeyMode | None = None,
        priority: int | None = None,
        flags: Sequence[str] | None = None,
    ) -> Job:
        """Add one job; with ``job_key``, replace or keep an existing one per ``job_key_mode``.

        Runs the schema's own ``add_job`` function, so the semantics (and the
        ``jobs:insert`` notification) are exactly graphile-worker's.
        """
        payload.validate_job(
            identifier,
            queue_name=queue_name,
            run_at=run_at,
            max_attempts=max_attempts,
            job_key=job_key,
            job_key_mode=job_key_mode,
            priority=priority,
            flags=flags,
        )
        jobs = await self._fetch_jobs(
            self.queries.add_job,
            identifier,
            payload.encode_payload(payload_value),
            queue_name,
            _storable_run_at(run_at),
            max_attempts,
            job_key,
            priority,
            list(flags) if flags is not None else None,
            job_key_mode or "replace",
        )
        return jobs[0]

    async def add_jobs(
        self,
        specs: Sequence[JobSpec | dict[str, Any]],
        *,
        job_key_preserve_run_at: bool = False,
    ) -> list[Job]:
        """Add many jobs in one statement; returns them (order not guaranteed)."""
        if not specs:
            return []
        encoded = payload.encode_specs(specs)
        executor = await self._ensure()
        with paused_gc(len(specs)):
            if isinstance(executor, asyncpg.Pool):
                async with executor.acquire() as conn:
                    return await self._add_jobs_on(conn, encoded, job_key_preserve_run_at)
            return await self._add_jobs_on(executor, encoded, job_key_preserve_run_at)

    async def _add_jobs_on(
        self, conn: asyncpg.Connection, encoded: str, preserve_run_at: bool
    ) -> list[Job]:
        with _user_errors(self.schema):
            rows = await conn.fetch(self.queries.add_jobs, encoded, preserve_run_at)
            tasks = set(map(_TASK_ID, rows)) - self._task_names.keys()
            queues = set(map(_QUEUE_ID, rows)) - self._queue_names.keys()
            queues.discard(None)
            if tasks or queues:
                await self._learn_names(conn, tasks, queues)
        return decode.decode_stored(rows, self._task_names, self._queue_names)

    async def _learn_names(
        self, conn: asyncpg.Connection, tasks: set[int], queues: set[int]
    ) -> None:
        rows = await conn.fetch(
            self.queries.task_and_queue_names,
            dispatch.ids_literal(sorted(tasks)),
            dispatch.ids_literal(sorted(queues)),
        )
        for is_queue, id_, name in rows:
            (self._queue_names if is_queue else self._task_names)[id_] = name

    async def add_jobs_count(
        self,
        specs: Sequence[JobSpec | dict[str, Any]],
        *,
        job_key_preserve_run_at: bool = False,
    ) -> int:
        """Like :meth:`add_jobs` without sending the rows back: for bulk loads."""
        if not specs:
            return 0
        executor = await self._ensure()
        with _user_errors(self.schema):
            count = await executor.fetchval(
                self.queries.add_jobs_count, payload.encode_specs(specs), job_key_preserve_run_at
            )
        return int(count)

    # ------------------------------------------------------------------ admin
    async def get_jobs(self, ids: Iterable[int]) -> list[Job]:
        """Jobs by id, with payloads (the ``jobs`` view has none)."""
        return await self._fetch_jobs(self.queries.get_jobs, list(ids))

    async def complete_jobs(self, ids: Iterable[int]) -> list[Job]:
        """Delete jobs as done; skips jobs a live worker holds. Returns those deleted."""
        return await self._fetch_jobs(self.queries.complete_jobs, list(ids))

    async def permanently_fail_jobs(
        self, ids: Iterable[int], reason: str | None = None
    ) -> list[Job]:
        """Stop jobs from running again, keeping them for inspection."""
        return await self._fetch_jobs(self.queries.permanently_fail_jobs, list(ids), reason)

    async def reschedule_jobs(
        self,
        ids: Iterable[int],
        *,
        run_at: datetime | None = None,
        priority: int | None = None,
        attempts: int | None = None,
        max_attempts: int | None = None,
    ) -> list[Job]:
        """Change when and how often jobs run; None leaves a field as it is."""
        payload.validate_field("run_at", run_at)
        payload.validate_field("priority", priority)
        payload.validate_field("attempts", attempts)
        payload.validate_field("max_attempts", max_attempts)
        return await self._fetch_jobs(
            self.queries.reschedule_jobs,
            list(ids),
            _storable_run_at(run_at),
            priority,
            attempts,
            max_attempts,
        )

    async def remove_job(self, job_key: str) -> Job | None:
        """Delete the job with this key, or stop it from retrying if it is running."""
        payload.validate_field("job_key", job_key)
        jobs = await self._fetch_jobs(self.queries.remove_job, job_key)
        return jobs[0] if jobs else None

    async def force_unlock_workers(self, worker_ids: Iterable[str]) -> None:
        """Free every job and queue locked by these worker ids (workers known dead)."""
        executor = await self._ensure()
        await executor.execute(self.queries.force_unlock_workers, list(worker_ids))

    async def cleanup(
        self,
        tasks: Iterable[CleanupTask] = ("GC_JOB_QUEUES",),
        *,
        task_identifiers_to_keep: Iterable[str] = (),
    ) -> None:
        """Housekeeping, as graphile-worker's ``cleanup``; unknown task names raise."""
        chosen = list(tasks)
        for name in chosen:
            if name not in CLEANUP_TASKS:
                raise InvalidJobSpec(
                    "tasks", f"unknown cleanup task {name!r}; expected one of {CLEANUP_TASKS}"
                )
        executor = await self._ensure()
        # Permanently failed jobs go first so their tasks and queues can be collected.
        if "DELETE_PERMAFAILED_JOBS" in chosen:
            await executor.execute(self.queries.delete_permafailed_jobs)
        if "GC_TASK_IDENTIFIERS" in chosen:
            await executor.execute(self.queries.gc_task_identifiers, list(task_identifiers_to_keep))
        if "GC_JOB_QUEUES" in chosen:
            await executor.execute(self.queries.gc_job_queues)


async def quick_add_job(
    dsn: str | None,
    identifier: str,
    payload_value: Any = None,
    *,
    schema: str | None = None,
    **options: Any,
) -> Job:
    """Add one job without keeping a client around (opens and closes a connection)."""
    async with WorkerUtils(dsn, schema=schema, max_pool_size=1) as utils:
        return await utils.add_job(identifier, payload_value, **options)


__all__ = [
    "CLEANUP_TASKS",
    "Job",
    "JobSpec",
    "WorkerUtils",
    "quick_add_job",
]
