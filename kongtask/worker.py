"""The worker pool: batched fetch, local queue, fixed slots, batched completion.

How a job flows (DESIGN.md section 4):

1. ``_fetch_loop`` locks a batch of due jobs in one statement (at most one per
   named queue) and decodes it in one ``_core`` call into the local queue.
2. ``concurrency`` slot coroutines pop jobs and run handlers; there is no
   asyncio Task per job. When the local queue falls to the number of slots and
   the last batch was full, the next fetch starts, so slots rarely wait.
3. Results go to the :class:`~kongtask.completion.Completer`, which writes them
   in batches on another connection while fetching goes on.
4. When a batch comes back short the pool is idle: it waits for a
   ``jobs:insert`` notification, the poll interval, a timer set to the next
   future ``run_at``, or a completed flush (which may free a named queue).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import secrets
import signal
import socket
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from . import migrate as _migrate
from ._core import decode
from .client import WorkerUtils
from .completion import Completer
from .config import resolve_schema
from .cron import CronScheduler
from .crontab import CronItem, as_cron_items
from .db import create_pool, mask_dsn, resolve_dsn
from .errors import ConfigError, JobTimeout, SchemaTooNew
from .events import EventEmitter
from .held import HeldConnection
from .helpers import Helpers
from .listener import Listener
from .queries import Queries
from .tasks import Handler, TaskList, as_task_list

log = logging.getLogger("kongtask.worker")

Job = decode.Job
ForbiddenFlags = (
    Iterable[str] | Callable[[], Iterable[str] | Awaitable[Iterable[str] | None] | None] | None
)

_DB_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    ConnectionError,
)
_TRACEBACK_FRAMES = 5
_STALE_LOCK_SWEEP_INTERVAL = 600.0
_YIELD_EVERY = 16
#: Concurrent fetch statements per pool (see Runner.__init__).
_FETCH_PIPELINES = 2
SHUTDOWN_MESSAGE = "Worker was forcefully shut down while running this job"


@dataclass(slots=True)
class WorkerOptions:
    """Tuning knobs of one pool. Times are in seconds."""

    concurrency: int = 10
    schema: str | None = None
    poll_interval: float = 2.0
    local_queue_size: int | None = None
    complete_batch_delay: float = 0.002
    complete_batch_size: int = 1000
    forbidden_flags: ForbiddenFlags = None
    prepared_statements: bool = True
    max_pool_size: int | None = None
    shutdown_timeout: float = 30.0
    job_timeout: float | None = None
    heartbeat_interval: float = 5.0
    dead_worker_timeout: float = 30.0
    handle_signals: bool = False
    events: EventEmitter | None = None
    logger: logging.Logger | None = None
    crontab: str | Sequence[CronItem] | None = None
    worker_id: str | None = None
    migrate: bool = True
    connect_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Reject nonsense early, naming the option."""
        if self.concurrency < 1:
            raise ConfigError(f"concurrency: must be >= 1, got {self.concurrency}")
        if self.poll_interval <= 0:
            raise ConfigError(f"poll_interval: must be > 0, got {self.poll_interval}")
        if self.local_queue_size is not None and self.local_queue_size < 1:
            raise ConfigError(f"local_queue_size: must be >= 1, got {self.local_queue_size}")
        if self.complete_batch_delay < 0:
            raise ConfigError("complete_batch_delay: must be >= 0")
        if self.shutdown_timeout < 0:
            raise ConfigError("shutdown_timeout: must be >= 0")
        if self.job_timeout is not None and self.job_timeout <= 0:
            raise ConfigError(f"job_timeout: must be > 0 or None, got {self.job_timeout}")
        if self.heartbeat_interval <= 0:
            raise ConfigError("heartbeat_interval: must be > 0")
        if self.dead_worker_timeout <= 2 * self.heartbeat_interval:
            raise ConfigError(
                "dead_worker_timeout: must exceed twice heartbeat_interval, or live pools "
                "would be declared dead"
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


class Runner:
    """One worker pool. Use :func:`run` to create and start it.

    ``await runner.wait()`` until it stops; ``await runner.stop()`` drains
    gracefully; ``await runner.kill()`` fails running jobs (they retry) and
    exits. Also an async context manager that stops gracefully on exit.
    """

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool | None,
        tasks: TaskList | Mapping[str, Handler],
        options: WorkerOptions,
        *,
        once: bool = False,
    ) -> None:
        options.validate()
        self.options = options
        self.tasks = as_task_list(tasks)
        if not self.tasks:
            raise ConfigError("tasks: no tasks registered; nothing to do")
        self.schema = resolve_schema(options.schema)
        self.queries = Queries(self.schema)
        self.events = options.events or EventEmitter()
        self.worker_id = options.worker_id or f"kongtask-{secrets.token_hex(9)}"
        self.log = options.logger or log
        self.exit_code = 0
        self._once = once
        self._given_pool = dsn_or_pool if isinstance(dsn_or_pool, asyncpg.Pool) else None
        self._dsn = None if self._given_pool else resolve_dsn(dsn_or_pool)  # type: ignore[arg-type]
        self._pool: asyncpg.Pool | None = self._given_pool
        self._concurrency = options.concurrency
        self._queue_size = options.local_queue_size or max(4 * options.concurrency, 32)
        # Local queue and idle slots waiting for a job.
        self._local: deque[Job] = deque()
        self._waiters: deque[asyncio.Future[Job | None]] = deque()
        self._running: dict[int, Job] = {}
        self._wakeup = asyncio.Event()
        self._more = False  # the last fetch was full: more jobs are probably due
        self._changed = True  # something may have moved the earliest future run_at
        # Fetch pipelines: two statements in flight on two connections, each
        # locking up to `_queue_size` jobs. One fetch at a time leaves the
        # server's second core idle and the slots waiting a whole fetch
        # (~8 ms per 500 rows here) after every batch; with two, the next
        # batch is already on its way while the last one runs.
        self._active = 0  # fetch statements in flight
        self._inflight = 0  # jobs those statements may return
        self._min_batch = max(1, self._queue_size // 5)
        self._need_reclaim = False  # a fetch failed: we may hold jobs we never received
        self._heartbeats = False
        self._streak = 0  # jobs handed out since the slots last yielded to the loop
        self._timeouts: dict[str, float | None] = {}
        self._fetch_sql = {
            False: self.queries.fetch_jobs(with_flags=False),
            True: self.queries.fetch_jobs(with_flags=True),
        }
        self._task_ids: list[int] = []
        self._task_names: list[str] = []
        self._handlers: dict[str, Handler] = {}
        self._is_async: dict[str, bool] = {}
        self._run_at_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self._abort = asyncio.Event()
        self._stopped = asyncio.Event()
        self._background: list[asyncio.Task[Any]] = []
        self._slots: list[asyncio.Task[None]] = []
        self._listener: Listener | None = None
        self._completer: Completer | None = None
        self._utils: WorkerUtils | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._signals_installed: list[int] = []
        self.ready = asyncio.Event()
        # Parsed now, so a bad crontab fails before anything connects.
        self._cron_items = as_cron_items(options.crontab)
        self._cron: CronScheduler | None = None

    def __repr__(self) -> str:
        return f"<Runner {self.worker_id} schema={self.schema!r} {mask_dsn(self._dsn)}>"

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> Runner:
        """Connect, check the schema, register tasks, start listening and fetching.

        The LISTEN connection opens while the pool connects and the schema is
        checked, and housekeeping (stale-lock sweep, first heartbeat) runs in
        the background, so a pool is ready after a handful of round trips.
        """
        loop = asyncio.get_running_loop()
        opts = self.options
        listening: asyncio.Task[None] | None = None
        if not self._once:
            connect_kwargs = dict(opts.connect_kwargs)
            if not opts.prepared_statements:
                connect_kwargs.setdefault("statement_cache_size", 0)
            self._listener = Listener(
                self._dsn if self._given_pool is None else _pool_dsn(self._given_pool),
                connect_kwargs,
                self.events,
                on_insert=self._on_insert,
                on_migrate=self._on_migrate,
                on_connected=self.nudge,
            )
            listening = loop.create_task(self._listener.start())
        try:
            if self._pool is None:
                self._pool = await create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=opts.max_pool_size or max(4, min(opts.concurrency, 20)),
                    prepared_statements=opts.prepared_statements,
                    **opts.connect_kwargs,
                )
            async with self._pool.acquire() as conn:
                if opts.migrate:
                    await _migrate.migrate(conn, self.schema)
                else:
                    await _migrate.ensure_compatible(conn, self.schema)
                self._heartbeats = await _migrate.has_kongtask_track(conn, self.schema)
                await self._register_tasks(conn)
                if self._heartbeats:
                    # Registered before the first fetch: a pool killed right after
                    # locking a job must already be known, or nobody frees it.
                    await conn.execute(self.queries.heartbeat, *self._heartbeat_args())
            if listening is not None:
                await listening
            if self._cron_items:
                self._cron = CronScheduler(
                    self._pool, self.schema, self._cron_items, self.events, logger=self.log
                )
                await self._cron.start()
        except BaseException:
            if listening is not None:
                listening.cancel()
                await asyncio.gather(listening, return_exceptions=True)
                assert self._listener is not None
                await self._listener.stop()
            await self._close_pool()
            raise
        if not self._heartbeats:
            self.log.warning(
                "schema %r lacks kongtask's heartbeat table (run `kongtask migrate`); "
                "crashed workers' jobs will only be freed after 4 hours",
                self.schema,
            )
        pool = self._pool
        self._utils = WorkerUtils(pool, schema=self.schema)
        self._completer = Completer(
            pool,
            self.queries,
            self.worker_id,
            delay=opts.complete_batch_delay,
            max_batch=opts.complete_batch_size,
            on_flushed=self._after_flush,
        )
        self.events.emit("pool:create", {"worker_id": self.worker_id, "runner": self})
        self._slots = [loop.create_task(self._slot()) for _ in range(self._concurrency)]
        for _ in range(_FETCH_PIPELINES):
            self._background.append(loop.create_task(self._fetch_loop()))
        if not self._once:
            self._background.append(loop.create_task(self._poll_loop()))
            if self._heartbeats:
                self._background.append(loop.create_task(self._heartbeat_loop()))
        for task in self._background:
            task.add_done_callback(self._background_done)
        if opts.handle_signals:
            self._install_signals()
        self.events.emit("worker:create", {"worker_id": self.worker_id})
        self.nudge()
        self.ready.set()
        return self

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        """A background loop must only end by cancellation; anything else is a bug
        that would leave the pool silently idle, so stop loudly instead."""
        if task.cancelled() or self._stopping:
            return
        error = task.exception()
        if error is None and self._once:
            return
        self.log.critical(
            "worker loop %s died: %r; shutting down", task.get_coro(), error, exc_info=error
        )
        self.events.emit("worker:fatalError", {"worker_id": self.worker_id, "error": error})
        self.exit_code = self.exit_code or 1
        self._begin_shutdown(self.options.shutdown_timeout)

    async def _register_tasks(self, conn: asyncpg.Connection) -> None:
        names = list(self.tasks)
        rows = await conn.fetch(self.queries.register_tasks, names)
        by_name = {row["identifier"]: row["id"] for row in rows}
        self._task_names = names
        self._task_ids = [by_name[name] for name in names]
        self._handlers = {name: self.tasks[name] for name in names}
        self._is_async = {name: self.tasks.is_async(name) for name in names}
        default = self.options.job_timeout
        self._timeouts = {name: self.tasks.timeout(name) or default for name in names}

    async def wait(self) -> int:
        """Until the pool has stopped; returns its exit code (0, or 57 for a newer schema)."""
        await self._stopped.wait()
        return self.exit_code

    async def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown: stop fetching, finish running jobs, write results, unlock."""
        await asyncio.shield(
            self._begin_shutdown(self.options.shutdown_timeout if timeout is None else timeout)
        )

    async def kill(self) -> None:
        """Forceful shutdown: running jobs are failed with a message (so they retry)."""
        self._force()
        await asyncio.shield(self._begin_shutdown(0))

    def _force(self) -> None:
        self._abort.set()
        for slot in self._slots:
            slot.cancel()

    def _begin_shutdown(self, timeout: float) -> asyncio.Task[None]:
        """Start shutting down once; later calls join the same shutdown."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self._shutdown(timeout))
        return self._shutdown_task

    async def __aenter__(self) -> Runner:
        if not self.ready.is_set():
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):
                continue
            self._signals_installed.append(sig)

    def _on_signal(self, sig: int) -> None:
        if self._shutdown_task is None:
            self.log.info(
                "received %s: finishing running jobs (again to force)", signal.Signals(sig).name
            )
            self._begin_shutdown(self.options.shutdown_timeout)
        else:
            self.log.warning(
                "received %s again: failing running jobs and exiting", signal.Signals(sig).name
            )
            self._force()

    async def _shutdown(self, timeout: float) -> None:
        forceful = self._abort.is_set()
        self.events.emit(
            "pool:forcefulShutdown" if forceful else "pool:gracefulShutdown",
            {"worker_id": self.worker_id},
        )
        self._stopping = True
        self._wakeup.set()
        if self._cron is not None:
            await self._cron.stop()
        if self._run_at_timer is not None:
            self._run_at_timer.cancel()
        # The fetch loop exits by itself once it sees _stopping; a fetch in
        # flight is allowed to finish, so the jobs it locks come back to us
        # (and are returned below) instead of being left locked in the database.
        fetchers = self._background[:_FETCH_PIPELINES]
        for task in self._background[_FETCH_PIPELINES:]:
            task.cancel()
        if fetchers:
            _, late = await asyncio.wait(fetchers, timeout=5)
            for task in late:
                task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._listener is not None:
            await self._listener.stop()
        # Jobs fetched but never started go back first, so others can run them.
        await self._return_local_queue()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        if self._slots and not forceful:
            _, pending = await asyncio.wait(self._slots, timeout=timeout)
            if pending:
                self.log.warning(
                    "%d job(s) still running after %.1fs; failing them so they retry",
                    len(self._running),
                    timeout,
                )
                self._abort.set()
                for slot in pending:
                    slot.cancel()
        if self._slots:
            await asyncio.gather(*self._slots, return_exceptions=True)
        error: BaseException | None = None
        try:
            if self._completer is not None:
                await asyncio.wait_for(self._completer.drain(), timeout=max(timeout, 10.0))
            if self._pool is not None:
                # Nothing runs and every result is written: whatever this worker
                # id still holds was never started, so its attempt is undone.
                await self._pool.execute(self.queries.return_orphans, self.worker_id, [])
                await self._pool.execute(self.queries.force_unlock_workers, [self.worker_id])
                if self._heartbeats:
                    await self._pool.execute(self.queries.forget_worker, self.worker_id)
        except (*_DB_ERRORS, asyncio.TimeoutError) as exc:
            error = exc
            self.log.error(
                "could not write final results or unlock (%s); locks of %s "
                "will be freed by the stale-lock sweep",
                exc,
                self.worker_id,
            )
        self._remove_signals()
        await self._close_pool()
        suffix = ":error" if error else ":complete"
        self.events.emit(
            ("pool:forcefulShutdown" if forceful else "pool:gracefulShutdown") + suffix,
            {"worker_id": self.worker_id, "error": error},
        )
        self.events.emit("pool:release", {"worker_id": self.worker_id})
        self.events.emit("stop", {"worker_id": self.worker_id})
        self._stopped.set()

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals_installed:
            loop.remove_signal_handler(sig)
        self._signals_installed.clear()

    async def _close_pool(self) -> None:
        if self._pool is not None and self._given_pool is None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except (*_DB_ERRORS, asyncio.TimeoutError):
                pool.terminate()

    async def _return_local_queue(self) -> None:
        if not self._local or self._pool is None:
            return
        jobs = list(self._local)
        self._local.clear()
        ids = [job.id for job in jobs]
        try:
            await self._pool.execute(self.queries.return_jobs, ids, self.worker_id)
        except _DB_ERRORS as exc:
            self.log.error("could not return %d unstarted job(s): %s", len(ids), exc)
            return
        self.events.emit("localQueue:returnJobs", {"jobs": jobs})

    # --------------------------------------------------------------- wake-up
    def nudge(self) -> None:
        """Ask for a fetch soon (idempotent)."""
        self._wakeup.set()

    def _on_insert(self, count: int) -> None:
        self._changed = True
        if count > 0 and not self._more:
            self._wakeup.set()

    def _on_migrate(self, number: int, breaking: bool) -> None:
        if breaking and number > _migrate.LATEST_MIGRATION:
            self.log.error(
                "schema migrated to breaking revision %d, newer than this kongtask "
                "understands (%d); stopping",
                number,
                _migrate.LATEST_MIGRATION,
            )
            self.exit_code = SchemaTooNew.exit_code
            self._begin_shutdown(self.options.shutdown_timeout)

    def _after_flush(self) -> None:
        # A flush may have freed named queues whose next jobs are now fetchable.
        if not self._more:
            self._wakeup.set()
        if self._once:
            self._wakeup.set()

    def _on_run_at_timer(self) -> None:
        self._run_at_timer = None
        self._changed = True
        self._wakeup.set()

    async def _poll_loop(self) -> None:
        interval = self.options.poll_interval
        since_sweep = _STALE_LOCK_SWEEP_INTERVAL  # sweep once right after start
        while True:
            if not self._more:
                self._changed = True
                self._wakeup.set()
            if since_sweep >= _STALE_LOCK_SWEEP_INTERVAL and self._pool is not None:
                since_sweep = 0.0
                try:
                    freed = await self._pool.fetchval(self.queries.sweep_stale_locks)
                except _DB_ERRORS as exc:
                    self.log.warning("stale-lock sweep failed: %s", exc)
                else:
                    if freed:
                        self.log.warning("freed %d lock(s) older than 4 hours", freed)
                        self.nudge()
            await asyncio.sleep(interval)
            since_sweep += interval

    def _heartbeat_args(self) -> tuple[str, str, int, list[str]]:
        return (self.worker_id, socket.gethostname(), os.getpid(), [str(i) for i in self._running])

    async def _heartbeat_loop(self) -> None:
        """Stay visibly alive, and free the jobs of pools that are not.

        Logs once when heartbeats start failing and once when they recover
        (a database outage must not flood the log).
        """
        assert self._pool is not None
        interval = self.options.heartbeat_interval
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self._pool.execute(self.queries.heartbeat, *self._heartbeat_args())
                row = await self._pool.fetchrow(
                    self.queries.recover_dead_workers, self.options.dead_worker_timeout
                )
            except _DB_ERRORS as exc:
                if not failing:
                    failing = True
                    self.log.warning("heartbeat failed (%s); retrying", exc)
                continue
            if failing:
                failing = False
                self.log.warning("heartbeat works again")
            if row is not None and row["workers"]:
                self.log.warning(
                    "freed %d job(s) of worker(s) %s that stopped heartbeating",
                    row["jobs"],
                    ", ".join(row["workers"]),
                )
                self.nudge()

    # ----------------------------------------------------------------- fetch
    async def _forbidden_flags(self) -> list[str] | None:
        source = self.options.forbidden_flags
        if source is None:
            return None
        value: Any = source() if callable(source) else source
        if inspect.isawaitable(value):
            value = await value
        if not value:
            return None
        return [str(flag) for flag in value]

    async def _fetch_loop(self) -> None:
        assert self._pool is not None
        held = HeldConnection(self._pool)
        try:
            await self._fetch_forever(held)
        finally:
            await held.release()

    async def _fetch_forever(self, held: HeldConnection) -> None:
        delay = 0.05
        failing = False
        while not self._stopping:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._stopping:
                return
            # Up to one batch queued locally plus one per pipeline in flight.
            room = 2 * self._queue_size - len(self._local) - self._inflight + len(self._waiters)
            if room <= 0 or (self._active and room < self._min_batch):
                continue
            if self._need_reclaim and self._active:
                # The reclaim gives back every job locked by this worker that we
                # do not hold; a fetch in flight holds some we have not seen yet.
                continue
            batch = min(room, self._queue_size)
            self._active += 1
            self._inflight += batch
            try:
                if self._need_reclaim:
                    await self._reclaim_orphans()
                    self._need_reclaim = False
                flags = await self._forbidden_flags()
                sql = self._fetch_sql[bool(flags)]
                args: list[Any] = [self.worker_id, self._task_ids, batch, self._task_names]
                if flags:
                    args.append(flags)
                conn = await held.get()
                rows = await conn.fetch(sql, *args)
                # Hand the jobs out before any further round trip: the
                # next_run_at query below would add its latency to theirs.
                jobs = decode.decode_jobs(rows) if rows else []
                if jobs:
                    self._deliver(jobs)
                next_due = None
                if len(rows) < batch and (self._changed or not rows):
                    next_due = await conn.fetchval(self.queries.next_run_at, self._task_ids)
            except asyncio.CancelledError:
                raise
            except _DB_ERRORS as exc:
                self._active -= 1
                self._inflight -= batch
                await held.discard()
                if not failing:
                    failing = True
                    self.log.warning("fetching jobs failed (%s); retrying", exc)
                    self.events.emit("worker:getJob:error", {"error": exc})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._need_reclaim = True
                self._wakeup.set()
                continue
            self._active -= 1
            self._inflight -= batch
            if self._need_reclaim:
                self._wakeup.set()  # the other pipeline waits to reclaim alone
            if failing:
                failing = False
                delay = 0.05
                self.log.warning("fetching jobs works again")
            self._more = len(rows) >= batch
            if not rows:
                self.events.emit("worker:getJob:empty", {"worker_id": self.worker_id})
            if self.events.has("localQueue:getJobs:complete"):
                self.events.emit(
                    "localQueue:getJobs:complete", {"jobs": jobs, "worker_id": self.worker_id}
                )
            if len(rows) < batch:
                self._changed = False
                if next_due is not None:
                    self._set_run_at_timer(float(next_due))
            elif self._more and self._want_prefetch():
                self._wakeup.set()
            if (
                self._once
                and not rows
                and not self._running
                and not self._local
                and not self._active
            ):
                # run_once: nothing due, nothing in hand; pending results are
                # written by the shutdown's drain.
                self._begin_shutdown(self.options.shutdown_timeout)
                return

    def _set_run_at_timer(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, 0.0) + 0.001
        timer = self._run_at_timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._run_at_timer = loop.call_at(when, self._on_run_at_timer)

    def _deliver(self, jobs: list[Job]) -> None:
        local = self._local
        if self._stopping:
            local.extend(jobs)  # returned by the shutdown, never started
            return
        waiters = self._waiters
        for job in jobs:
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(job)
                    break
            else:
                local.append(job)

    async def _reclaim_orphans(self) -> None:
        """After a failed fetch, free jobs the database says we hold but we never got.

        A fetch can commit and then lose its connection before the rows reach
        us; those jobs would stay locked for hours. Everything locked by this
        worker id that is not running, queued locally or awaiting its result
        is given back with its attempt undone. Raises if the database is still
        unreachable; the fetch loop then retries it before its next fetch.
        """
        assert self._pool is not None and self._completer is not None
        held = [*self._running, *(job.id for job in self._local), *self._completer.pending_ids()]
        await self._pool.execute(self.queries.return_orphans, self.worker_id, held)

    # ----------------------------------------------------------------- slots
    def _want_prefetch(self) -> bool:
        """A pipeline is free and less than a batch is queued or on its way."""
        return (
            self._active < _FETCH_PIPELINES
            and len(self._local) + self._inflight <= self._queue_size
        )

    async def _next_job(self) -> Job | None:
        local = self._local
        if local:
            job = local.popleft()
            self._streak += 1
            if self._streak >= _YIELD_EVERY:
                # Handlers that never suspend would otherwise run the whole local
                # queue in one go, starving the fetch and flush that should
                # overlap with them; a periodic loop turn lets both proceed.
                self._streak = 0
                await asyncio.sleep(0)
        else:
            if self._stopping:
                return None
            waiter: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            if self._active < _FETCH_PIPELINES:
                self._wakeup.set()
            job = await waiter
            if job is None:
                return None
        if self._more and self._want_prefetch():
            self._wakeup.set()
        return job

    async def _slot(self) -> None:
        completer = self._completer
        assert completer is not None and self._pool is not None and self._utils is not None
        running = self._running
        handlers = self._handlers
        is_async = self._is_async
        timeouts = self._timeouts
        events = self.events
        loop = asyncio.get_running_loop()
        while True:
            job = await self._next_job()
            if job is None:
                return
            running[job.id] = job
            try:
                if job.payload_error is not None:
                    raise ValueError(job.payload_error)
                helpers = Helpers(job, self._utils, self._pool, self._abort, self.worker_id, loop)
                if events.has("job:start"):
                    events.emit("job:start", {"job": job, "worker_id": self.worker_id})
                name = job.task_identifier
                limit = timeouts[name]
                if is_async[name]:
                    call = handlers[name](job.payload, helpers)
                else:
                    call = loop.run_in_executor(None, handlers[name], job.payload, helpers)
                if limit is None:
                    result = await call
                else:
                    result = await _with_timeout(call, limit, name)
                if result is not None and inspect.isawaitable(result):
                    result = await result
                replacement = None
                if result.__class__ is list and isinstance(job.payload, list):
                    replacement = await self._batch_failures(job, result)
            except asyncio.CancelledError:
                del running[job.id]
                self._record_failure(job, SHUTDOWN_MESSAGE, None, None)
                return
            except BaseException as exc:
                del running[job.id]
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    self._record_failure(job, format_error(exc), exc, None)
                    raise
                self._record_failure(job, format_error(exc), exc, None)
                continue
            del running[job.id]
            if replacement is not None:
                failed_payload, message = replacement
                self._record_failure(job, message, None, failed_payload)
                continue
            completer.complete(job.id)
            if events.has("job:success"):
                events.emit("job:success", {"job": job, "worker_id": self.worker_id})
            if events.has("job:complete"):
                events.emit("job:complete", {"job": job, "error": None})

    async def _batch_failures(self, job: Job, result: list[Any]) -> tuple[list[Any], str] | None:
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

    def _record_failure(
        self,
        job: Job,
        message: str,
        exc: BaseException | None,
        replacement: list[Any] | None,
    ) -> None:
        assert self._completer is not None
        payload_text = orjson.dumps(replacement).decode() if replacement is not None else None
        self._completer.fail(job.id, message, payload_text)
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


async def _with_timeout(call: Awaitable[Any], limit: float, task: str) -> Any:
    """Await a handler for at most ``limit`` seconds, failing it with JobTimeout.

    A sync handler's thread cannot be interrupted: the job is failed (and will
    retry) while the thread runs on; document-worthy, not fixable in Python.
    """
    try:
        return await asyncio.wait_for(call, limit)
    except asyncio.TimeoutError:
        raise JobTimeout(f"task {task!r} exceeded its timeout of {limit:g}s") from None


def _pool_dsn(pool: asyncpg.Pool) -> str | None:
    """The DSN a borrowed pool was made with, for the LISTEN connection."""
    args = getattr(pool, "_connect_args", None) or ()
    return args[0] if args else None


def _options(**kwargs: Any) -> WorkerOptions:
    known = set(WorkerOptions.__dataclass_fields__)
    unknown = set(kwargs) - known
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return WorkerOptions(**kwargs)


async def run(
    dsn_or_pool: str | asyncpg.Pool | None,
    tasks: TaskList | Mapping[str, Handler],
    **options: Any,
) -> Runner:
    """Start a worker pool and return its :class:`Runner` (already running)."""
    runner = Runner(dsn_or_pool, tasks, _options(**options))
    await runner.start()
    return runner


async def run_once(
    dsn_or_pool: str | asyncpg.Pool | None,
    tasks: TaskList | Mapping[str, Handler],
    **options: Any,
) -> int:
    """Run every job that is due now (and any that become due meanwhile), then return."""
    runner = Runner(dsn_or_pool, tasks, _options(**options), once=True)
    await runner.start()
    return await runner.wait()


__all__ = ["SHUTDOWN_MESSAGE", "Runner", "WorkerOptions", "format_error", "run", "run_once"]
