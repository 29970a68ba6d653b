"""What happens around a job's handler that is not bookkeeping: failures, timeouts,
batch-job results.

The slot loop (``_core.dispatch``) calls into here only off the happy path, or
for the parts that must stay Python (formatting a traceback, logging, asyncio
timeouts), so that a succeeding job costs no Python-level call of its own.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from collections.abc import Awaitable
from typing import Any

import orjson

from ._core import decode, dispatch
from .errors import JobTimeout
from .events import EventEmitter

_TRACEBACK_FRAMES = 5
Job = decode.Job
SHUTDOWN_MESSAGE = "Worker was forcefully shut down while running this job"
FENCE_MESSAGE = (
    "Worker lost its database for so long that other workers could free this job; "
    "its run was cancelled"
)


def format_error(exc: BaseException) -> str:
    """``last_error`` text: the message first (as graphile-worker stores it), then
    the last few frames of the traceback, so an operator sees where it failed."""
    message = str(exc) or type(exc).__name__
    if type(exc).__name__ not in message:
        message = f"{type(exc).__name__}: {message}"
    frames = traceback.format_tb(exc.__traceback__)[-_TRACEBACK_FRAMES:]
    if not frames:
        return message
    return message + "\n" + "".join(frames).rstrip()


async def with_timeout(call: Awaitable[Any], limit: float, task: str) -> Any:
    """Await a handler for at most ``limit`` seconds, failing it with JobTimeout.

    A sync handler's thread cannot be interrupted: the job is failed (and will
    retry) while the thread runs on; document-worthy, not fixable in Python.
    """
    try:
        return await asyncio.wait_for(call, limit)
    except asyncio.TimeoutError:
        raise JobTimeout(f"task {task!r} exceeded its timeout of {limit:g}s") from None


class Outcomes:
    """Failure handling of one pool: formats the failure, logs it, emits events,
    then hands it to ``results`` (``_core.dispatch.Results``), which writes it.

    ``cancel_message`` is what a cancelled run's ``last_error`` says: a forceful
    shutdown by default; the heartbeat's fence sets its own.
    """

    def __init__(
        self, events: EventEmitter, log: logging.Logger, results: dispatch.Results
    ) -> None:
        self.events = events
        self.log = log
        self._results = results
        self.cancel_message = SHUTDOWN_MESSAGE

    with_timeout = staticmethod(with_timeout)

    def failed(self, job: Job, exc: BaseException | None, cancelled: bool) -> None:
        """A handler raised (or was cancelled by a forceful shutdown or the fence)."""
        message = self.cancel_message if cancelled else format_error(exc)  # type: ignore[arg-type]
        self._record(job, message, exc, None)

    def replaced(self, job: Job, replacement: tuple[list[Any], str]) -> None:
        """A batch job failed for some entries: only those stay in its payload."""
        failed_payload, message = replacement
        self._record(job, message, None, orjson.dumps(failed_payload).decode())

    def _record(
        self, job: Job, message: str, exc: BaseException | None, payload_text: str | None
    ) -> None:
        self._results.fail(job, message, payload_text)
        final = job.attempts >= job.max_attempts
        self.log.error(
            "job %s (%s) failed, attempt %d of %d%s: %s",
            job.id,
            job.task_identifier,
            job.attempts,
            job.max_attempts,
            " (permanently)" if final else "",
            message.splitlines()[0] if message else "",
        )
        events = self.events
        if events.has("job:error"):
            events.emit("job:error", {"job": job, "error": exc, "message": message})
        if final and events.has("job:failed"):
            events.emit("job:failed", {"job": job, "error": exc, "message": message})
        if events.has("job:complete"):
            events.emit("job:complete", {"job": job, "error": exc or message})

    async def batch_outcome(self, job: Job, result: list[Any]) -> tuple[list[Any], str] | None:
        """For a list payload answered by a same-length list: keep the failed entries."""
        payload = job.payload
        if len(result) != len(payload):
            self.log.warning(
                "task %r returned %d results for %d payload entries; treating as success",
                job.task_identifier,
                len(result),
                len(payload),
            )
            return None
        failed: list[Any] = []
        messages: list[str] = []
        for entry, outcome in zip(payload, result, strict=True):
            if inspect.isawaitable(outcome):
                try:
                    outcome = await outcome
                except Exception as exc:
                    outcome = exc
            if isinstance(outcome, BaseException):
                failed.append(entry)
                messages.append(str(outcome) or type(outcome).__name__)
        if not failed:
            return None
        return failed, "Batch failures:\n" + "\n".join(messages)
