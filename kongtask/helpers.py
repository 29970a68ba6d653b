"""What a task handler gets besides its payload: the job, a logger, and the client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

if TYPE_CHECKING:
    from ._core.decode import Job
    from .client import WorkerUtils

T = TypeVar("T")


class JobLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes messages with the job and puts its identity in ``extra``."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs.setdefault("extra", {}).update(extra)
        return (
            f"[job {extra.get('job_id')} {extra.get('task')}#{extra.get('attempt')}] {msg}",
            kwargs,
        )


class HelperContext:
    """What every job's helpers share: built once per pool, referenced per job."""

    __slots__ = ("abort_signal", "loop", "pool", "utils", "worker_id")

    def __init__(
        self,
        utils: WorkerUtils,
        pool: asyncpg.Pool,
        abort_signal: asyncio.Event,
        worker_id: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.utils = utils
        self.pool = pool
        self.abort_signal = abort_signal
        self.worker_id = worker_id
        self.loop = loop


class Helpers:
    """Per-job helpers; built for each job, so it holds two references only.

    ``add_job``/``add_jobs`` use the worker's pool (the schema's functions, so
    notifications and job keys behave as for any client). ``abort_signal`` is
    set when the pool shuts down forcefully: long handlers should watch it.
    """

    __slots__ = ("_context", "_logger", "job")

    def __init__(self, context: HelperContext, job: Job) -> None:
        self._context = context
        self.job = job
        self._logger: logging.LoggerAdapter | None = None  # type: ignore[type-arg]

    @property
    def abort_signal(self) -> asyncio.Event:
        """Set when the pool shuts down forcefully."""
        return self._context.abort_signal

    @property
    def worker_id(self) -> str:
        """The id of the pool running this job (what ``locked_by`` says once claimed)."""
        return self._context.worker_id

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The pool's event loop (for sync handlers that need to reach it)."""
        return self._context.loop

    @property
    def logger(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """A logger tagged with this job (created on first use: most jobs never log)."""
        if self._logger is None:
            job = self.job
            self._logger = JobLoggerAdapter(
                logging.getLogger(f"kongtask.job.{job.task_identifier}"),
                {
                    "job_id": job.id,
                    "task": job.task_identifier,
                    "attempt": job.attempts,
                    "worker_id": self.worker_id,
                },
            )
        return self._logger

    async def add_job(self, identifier: str, payload: Any = None, **options: Any) -> Job:
        """Add a job (same options as :meth:`WorkerUtils.add_job`)."""
        return await self._context.utils.add_job(identifier, payload, **options)

    async def add_jobs(self, specs: Any, **options: Any) -> list[Job]:
        """Add many jobs in one statement (see :meth:`WorkerUtils.add_jobs`)."""
        return await self._context.utils.add_jobs(specs, **options)

    async def with_pg_client(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` with a connection borrowed from the worker's pool."""
        async with self._context.pool.acquire() as conn:
            return await fn(conn)

    def run_sync(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        """From a sync handler (in a thread), run a helper coroutine on the loop and wait."""
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), self.loop)
        return future.result(timeout)


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable
