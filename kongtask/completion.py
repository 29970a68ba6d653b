"""Batched completion: finished and failed jobs are written in one statement each.

Slots hand results here and move on at once; a single flusher writes what has
accumulated, so under load one round trip settles hundreds of jobs (River's
and graphile-worker's batched completion). Results are never dropped: a flush
that fails keeps its batch and retries with backoff. Replaying a batch is
harmless: deleting a deleted job does nothing, and failures only touch jobs
still locked by this worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from ._core import dispatch
from .held import HeldConnection, tids_literal
from .queries import Queries
from .queries.session import ANY_SIZE_PLANS

log = logging.getLogger("kongtask.worker")

FailEntry = tuple[int, str, str | None]


def _row_count(status: str) -> int:
    """Rows a statement touched, from its command tag (``DELETE 998``)."""
    return int(status.rpartition(" ")[2] or 0)


async def _plan_for_any_size(conn: asyncpg.Connection) -> None:
    await conn.execute(ANY_SIZE_PLANS)


class Completer:
    """Buffers results; flushes after ``delay`` seconds or at ``max_batch`` entries."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        queries: Queries,
        worker_id: str,
        *,
        delay: float,
        max_batch: int,
        on_flushed: Callable[[], None],
        session_settings: bool = False,
    ) -> None:
        # With prepared statements (no transaction-pooling proxy), the writer's
        # connection plans as the fetch connections do (ANY_SIZE_PLANS): a
        # delete by row address planned on a small table scanned all of a big one.
        self._conn = HeldConnection(pool, setup=_plan_for_any_size if session_settings else None)
        self._q = queries
        self._worker_id = worker_id
        self._delay = delay
        self._max_batch = max_batch
        self._on_flushed = on_flushed
        self._done: list[int] = []
        #: Row addresses parallel to ``_done``; None where none is known.
        self._done_rows: list[str | None] = []
        self._failed: list[FailEntry] = []
        self._writing: list[int] = []  # ids of the batch a flush is writing
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop = asyncio.get_running_loop()
        self._failing_since: float | None = None

    @property
    def pending(self) -> int:
        """Results not yet written."""
        return len(self._done) + len(self._failed)

    @property
    def idle(self) -> bool:
        """Nothing buffered and no write in flight."""
        return self._idle.is_set()

    def pending_ids(self) -> list[int]:
        """Ids whose results are buffered or being written: still locked by us,
        and rightly so."""
        return [*self._writing, *self._done, *(entry[0] for entry in self._failed)]

    def complete(self, job_id: int, ctid: str | None) -> None:
        """Record a success: the row is deleted by its address ``ctid`` when
        the fetch returned one, else by id."""
        self._done.append(job_id)
        self._done_rows.append(ctid)
        self._schedule()

    def fail(self, job_id: int, message: str, replacement_payload: str | None) -> None:
        """Record a failure; ``replacement_payload`` is JSON text or None."""
        self._failed.append((job_id, message, replacement_payload))
        self._schedule()

    def _schedule(self) -> None:
        self._idle.clear()
        if self._flushing is not None:
            return  # the running flush loops until the buffers are empty
        if len(self._done) + len(self._failed) >= self._max_batch:
            self._start_flush()
        elif self._timer is None:
            if self._delay <= 0:
                self._timer = self._loop.call_soon(self._start_flush)
            else:
                self._timer = self._loop.call_later(self._delay, self._start_flush)

    def _start_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing is None:
            self._flushing = self._loop.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        backoff = 0.05
        try:
            while self._done or self._failed:
                done, rows, failed = self._done, self._done_rows, self._failed
                self._done, self._done_rows, self._failed = [], [], []
                self._writing = [*done, *(entry[0] for entry in failed)]
                try:
                    await self._write(done, rows, failed)
                except Exception as exc:
                    # Put the batch back in front and retry: nothing is lost.
                    self._done = done + self._done
                    self._done_rows = rows + self._done_rows
                    self._failed = failed + self._failed
                    if self._failing_since is None:
                        self._failing_since = self._loop.time()
                        log.warning("writing job results failed (%s); retrying", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if self._failing_since is not None:
                    log.warning("writing job results works again")
                    self._failing_since = None
                backoff = 0.05
                self._on_flushed()
        finally:
            self._writing = []
            self._flushing = None
            if self._done or self._failed:
                self._schedule()
            else:
                self._idle.set()

    async def _write(
        self, done: list[int], rows: list[str | None], failed: list[FailEntry]
    ) -> None:
        conn = await self._conn.get()
        if done:
            by_id = [job_id for job_id, row in zip(done, rows, strict=True) if row is None]
            if len(by_id) < len(done):
                addressed = [job_id for job_id, row in zip(done, rows, strict=True) if row]
                status = await conn.execute(
                    self._q.complete_by_address,
                    tids_literal([row for row in rows if row]),
                    dispatch.ids_literal(addressed),
                )
                if _row_count(status) < len(addressed):
                    # A row moved since it was claimed: delete by id (deleting
                    # the ones already gone again does nothing).
                    by_id += addressed
            if by_id:
                await conn.execute(
                    self._q.complete_batch, dispatch.ids_literal(by_id), self._worker_id
                )
        if failed:
            ids = dispatch.ids_literal([entry[0] for entry in failed])
            messages = [entry[1] for entry in failed]
            payloads = [entry[2] for entry in failed]
            await conn.execute(self._q.fail_batch, ids, messages, payloads, self._worker_id)

    async def drain(self) -> None:
        """Write everything buffered now, wait until it is written, let go of the connection."""
        if self._done or self._failed:
            self._start_flush()
        await self._idle.wait()
        await self._conn.release()
