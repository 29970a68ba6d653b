"""What a task handler gets besides its payload: the job, a logger, and the client.

The per-job object, :class:`Helpers`, is built once per job on the hot path, so
it lives in ``_core.dispatch`` (a C struct of two references in the compiled
twin) and delegates everything else to the pool's :class:`HelperContext`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from ._core import dispatch

if TYPE_CHECKING:
    from ._core.decode_py import Job
    from ._core.dispatch_py import Helpers as Helpers
    from .client import WorkerUtils
else:
    Helpers = dispatch.Helpers

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
    """What every job's helpers share, and do for them: built once per pool."""

    __slots__ = ("_utils", "abort_signal", "loop", "pool", "schema", "worker_id")

    def __init__(
        self,
        schema: str,
        pool: asyncpg.Pool,
        abort_signal: asyncio.Event,
        worker_id: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.schema = schema
        self._utils: WorkerUtils | None = None
        self.pool = pool
        self.abort_signal = abort_signal
        self.worker_id = worker_id
        self.loop = loop

    @property
    def utils(self) -> WorkerUtils:
        """The client on the pool's connections, made when a handler first adds a job:
        most pools never do, and the client module is not needed to become ready."""
        if self._utils is None:
            from .client import WorkerUtils

            self._utils = WorkerUtils(self.pool, schema=self.schema)
        return self._utils

    def job_logger(self, job: Job) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """A logger tagged with this job (created on first use: most jobs never log)."""
        return JobLoggerAdapter(
            logging.getLogger(f"kongtask.job.{job.task_identifier}"),
            {
                "job_id": job.id,
                "task": job.task_identifier,
                "attempt": job.attempts,
                "worker_id": self.worker_id,
            },
        )

    def run_in_thread(self, handler: Callable[..., T], payload: Any, helpers: Any) -> Awaitable[T]:
        """Run a sync handler in the loop's default thread pool."""
        return self.loop.run_in_executor(None, handler, payload, helpers)

    async def with_pg_client(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` with a connection borrowed from the worker's pool."""
        async with self.pool.acquire() as conn:
            return await fn(conn)

    def run_sync(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        """From a sync handler (in a thread), run a coroutine on the loop and wait."""
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), self.loop)
        return future.result(timeout)


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


__all__ = ["HelperContext", "Helpers", "JobLoggerAdapter"]
