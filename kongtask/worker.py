"""The worker pool: connects, builds the pieces in the order a job travels, starts
and stops them.

A job travels one way (docs/architecture.md has the whole path):
fetch (:mod:`kongtask.fetcher` decides when, :mod:`kongtask.fetch_cycle` runs
the statements) → dispatch (``_core.dispatch``: the local queue and the slot
coroutines) → the handler → its outcome (``_core.dispatch.Results``, via
:mod:`kongtask.outcomes` for failures) → the write (:mod:`kongtask.leases` for
leased jobs, :mod:`kongtask.completion` for the rest). Every reason to fetch
again is posted to one :class:`~kongtask.fetcher.Wakeups` mailbox. Polling,
the stale-lock sweep, heartbeats and recovery: :mod:`kongtask.housekeeping`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import asyncpg

from . import migrate as _migrate
from . import pooling
from ._core import IMPLEMENTATION, decode, dispatch
from .completion import Completer
from .config import resolve_schema
from .db import DB_ERRORS, DB_OR_TIMEOUT_ERRORS, connect, create_pool, mask_dsn, resolve_dsn
from .errors import ConfigError, SchemaTooNew
from .events import EventEmitter
from .fetch_cycle import FetchCycle
from .fetcher import Fetcher, State, Wakeups, pipelines_for
from .helpers import HelperContext
from .housekeeping import Heartbeat, poll_loop
from .leases import LeaseKeeper
from .listener import Listener
from .options import WorkerOptions, build_options, check_pool_size
from .outcomes import FENCE_MESSAGE, SHUTDOWN_MESSAGE, Outcomes, format_error
from .queries import Queries
from .tasks import Handler, TaskList, as_task_list
from .unhandled import warn_unhandled_cron, warn_unhandled_jobs

if TYPE_CHECKING:
    from .cron import CronScheduler
    from .crontab import CronItem

log = logging.getLogger("kongtask.worker")


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
        self._heartbeat: Heartbeat | None = None
        self._outcomes: Outcomes | None = None
        self._stopping = False
        self._abort = asyncio.Event()
        self._stopped = asyncio.Event()
        self._wakeups = Wakeups()
        self._fetch_task: asyncio.Task[State] | None = None
        self._background: list[asyncio.Task[Any]] = []
        self._unhandled_check: asyncio.Task[None] | None = None
        self._slots: list[asyncio.Task[None]] = []
        self._listener: Listener | None = None
        self._completer: Completer | None = None
        self._keeper: LeaseKeeper | None = None
        self._fetcher: Fetcher | None = None
        self._dispatcher: dispatch.Dispatcher | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._signals_installed: list[int] = []
        self.ready = asyncio.Event()
        # Parsed now, so a bad crontab fails before anything connects.
        self._cron_items: list[CronItem] = []
        if options.crontab is not None:
            from .crontab import as_cron_items  # only pools with a crontab pay its import

            self._cron_items = as_cron_items(options.crontab)
        self._cron: CronScheduler | None = None

    def __repr__(self) -> str:
        return f"<Runner {self.worker_id} schema={self.schema!r} {mask_dsn(self._dsn)}>"

    # ------------------------------------------------------------- inspection
    @property
    def running_jobs(self) -> dict[int, decode.Job]:
        """Jobs whose handlers run now, by id (a live view: do not modify)."""
        return self._dispatcher.running if self._dispatcher is not None else {}

    @property
    def queued_jobs(self) -> int:
        """Jobs fetched and locked, waiting in the local queue for a free slot."""
        return self._dispatcher.queued() if self._dispatcher is not None else 0

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> Runner:
        """Connect, check the schema, register tasks, start listening and fetching.

        The LISTEN connection opens while the pool connects; on an installed
        schema, the schema check is one statement and everything else before
        ready (tasks, first heartbeat, recovery, warnings) one more (:meth:`_join`).
        """
        loop = asyncio.get_running_loop()
        opts = self.options
        listening: asyncio.Task[None] | None = None
        probe = False  # whether to look for a transaction-pooling proxy
        listen_dsn = self._listen_dsn()
        if listen_dsn is not False:
            connect_kwargs = dict(opts.connect_kwargs)
            if not opts.prepared_statements and opts.listen_dsn is None:
                connect_kwargs.setdefault("statement_cache_size", 0)
            self._listener = Listener(
                listen_dsn,
                connect_kwargs,
                self.events,
                on_insert=self._wakeups.jobs_inserted,
                on_migrate=self._on_migrate,
                on_connected=self._wakeups.nudge,
            )
            listening = loop.create_task(self._listener.start())
        try:
            if self._given_pool is not None:
                check_pool_size("the given pool's max_size", self._given_pool.get_max_size())
            if self._pool is None:
                self._pool = await create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=opts.pool_size,
                    prepared_statements=opts.prepared_statements,
                    **opts.connect_kwargs,
                )
                probe = opts.prepared_statements
            async with self._pool.acquire() as conn:
                if opts.migrate:
                    # migrate() read the track's version already: two round trips fewer.
                    track = (await _migrate.migrate(conn, self.schema)).kongtask_version
                else:
                    track = await _migrate.installed_track(conn, self.schema)
                if track >= len(_migrate.KONGTASK_MIGRATIONS):
                    self._heartbeat = Heartbeat(
                        self._pool,
                        self.queries,
                        self.worker_id,
                        lambda: list(self.running_jobs),
                        interval=opts.heartbeat_interval,
                        dead_after=opts.dead_worker_timeout,
                        on_freed=self._wakeups.jobs_freed,
                        on_fenced=self._fence,
                        on_unfenced=self._lift_fence,
                        log=self.log,
                    )
                    task_ids, task_names, backend_pid = await self._join(conn, self._heartbeat)
                    if probe:
                        probe = pooling.pid_differs(backend_pid, conn)
                else:
                    if probe:
                        probe = await pooling.behind_proxy(conn)
                    task_ids, task_names = await self._register_tasks(conn)
            if listening is not None:
                await listening
            if probe:
                await self._probe_pooler()
            if opts.prepared_statements and self._given_pool is None:
                self.events.on("worker:getJob:error", self._on_fetch_error)
            if self._cron_items:
                warn_unhandled_cron(self._cron_items, task_names, self.log)
                from .cron import CronScheduler  # only pools with a crontab need it

                self._cron = CronScheduler(
                    self._pool, self.schema, self._cron_items, self.events, logger=self.log
                )
                await self._cron.start()
        except BaseException as exc:
            if listening is not None:
                listening.cancel()
                await asyncio.gather(listening, return_exceptions=True)
                assert self._listener is not None
                await self._listener.stop()
            await self._close_pool()
            if probe and pooling.is_pooler_error(exc):
                # Start-up met the pooler before the probe could (two sessions swapped
                # under the schema check): the same one line.
                raise ConfigError(pooling.mid_run_message(exc)) from None
            raise
        if self._heartbeat is None:
            self.log.warning(
                "schema %r lacks kongtask's heartbeat table (run `kongtask migrate`); "
                "crashed workers' jobs will only be freed after 4 hours",
                self.schema,
            )
        self._build(loop, task_ids, task_names)
        self.events.emit("pool:create", {"worker_id": self.worker_id, "runner": self})
        assert self._fetcher is not None and self._dispatcher is not None
        assert self._pool is not None
        self._slots = [loop.create_task(self._dispatcher.slot()) for _ in range(opts.concurrency)]
        self._fetch_task = loop.create_task(self._fetcher.run())
        self._fetch_task.add_done_callback(self._fetching_done)
        if not self._once:
            self._background.append(
                loop.create_task(
                    poll_loop(
                        self._pool,
                        self.queries,
                        opts.poll_interval,
                        self._wakeups.poll,
                        self._wakeups.jobs_freed,
                        self.log,
                    )
                )
            )
        if self._heartbeat is not None:
            # run_once too: a drain can outlast dead_worker_timeout, and a pool
            # whose row went stale would have its running jobs freed by others.
            self._background.append(loop.create_task(self._heartbeat.run()))
        for task in self._background:
            task.add_done_callback(self._background_done)
        if opts.handle_signals:
            self._install_signals()
        self.events.emit("worker:create", {"worker_id": self.worker_id})
        self.ready.set()
        # The one line that says the pool works: tests and process managers wait
        # for it, and a program that configured logging shows it to its user.
        # Guarded: masking the DSN compiles its patterns, for nobody, below INFO.
        if self.log.isEnabledFor(logging.INFO):
            self.log.info(
                "worker %s ready: %d task(s), concurrency %d, schema %r, %s (%s)",
                self.worker_id,
                len(self.tasks),
                opts.concurrency,
                self.schema,
                "a given pool" if self._given_pool is not None else mask_dsn(self._dsn),
                IMPLEMENTATION,
            )
        self._unhandled_check = loop.create_task(self._warn_unhandled(task_names))
        return self

    async def _warn_unhandled(self, task_names: list[str]) -> None:
        """Warn of waiting jobs no handler here can run. After ready, not in the
        start-up statement: it is a log line, and reading the jobs table on a
        fresh connection costs a millisecond of ready (see ``Queries.join``)."""
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                await warn_unhandled_jobs(conn, self.queries, task_names, self.log)
        except DB_OR_TIMEOUT_ERRORS as exc:
            self.log.debug("could not look for jobs no handler here can run: %s", exc)

    def _build(
        self, loop: asyncio.AbstractEventLoop, task_ids: list[int], task_names: list[str]
    ) -> None:
        """Build the pieces in the order a job's outcome flows back: the writers
        first, then what feeds them, the fetcher last. Each gets what it hands
        on to at construction, so nothing is patched in afterwards."""
        opts = self.options
        pool = self._pool
        assert pool is not None
        wakeups = self._wakeups
        self._completer = completer = Completer(
            pool,
            self.queries,
            self.worker_id,
            delay=opts.complete_batch_delay,
            max_batch=opts.complete_batch_size,
            on_flushed=wakeups.results_written,
            session_settings=opts.prepared_statements,
        )
        pipelines = pipelines_for(opts.concurrency)
        self._keeper = keeper = LeaseKeeper(
            pool,
            self.queries,
            self.worker_id,
            lease_time=opts.lease_seconds,
            # Two pipelines, each with its next batch in flight while up to two
            # earlier leases of it finish; never more than the pool can spare.
            max_connections=max(2, min(2 * pipelines, pool.get_max_size() - 2)),
            completer=completer,
            on_settled=wakeups.lease_settled,
            log=self.log,
            session_settings=opts.prepared_statements,
        )
        results = dispatch.Results(completer)
        self._outcomes = outcomes = Outcomes(self.events, self.log, results)
        context = HelperContext(self.schema, pool, self._abort, self.worker_id, loop)
        tasks = self.tasks
        self._dispatcher = dispatcher = dispatch.Dispatcher(
            tasks={
                name: dispatch.TaskEntry(
                    tasks[name], tasks.is_async(name), tasks.timeout(name) or opts.job_timeout
                )
                for name in task_names
            },
            events=self.events,
            results=results,
            outcomes=outcomes,
            context=context,
            request_fetch=wakeups.slots_hungry,
            worker_id=self.worker_id,
            low_water=opts.concurrency,
        )
        pool_leases = opts.lease_time > 0
        cycle = FetchCycle(
            queries=self.queries,
            worker_id=self.worker_id,
            keeper=keeper,
            deliver=dispatcher.deliver,
            held_ids=lambda: [*dispatcher.held_ids(), *completer.pending_ids()],
            tasks=dict(zip(task_ids, task_names, strict=True)),
            leased_tasks={
                task_id
                for task_id, name in zip(task_ids, task_names, strict=True)
                if (tasks.lease(name) if tasks.lease(name) is not None else pool_leases)
            },
            forbidden_flags=opts.forbidden_flags,
            events=self.events,
        )
        self._fetcher = Fetcher(
            cycle=cycle,
            wakeups=wakeups,
            dispatcher=dispatcher,
            busy=lambda: bool(
                dispatcher.running or dispatcher.queued() or not completer.idle or keeper.pending()
            ),
            concurrency=opts.concurrency,
            max_batch=opts.max_batch,
            pipelines=pipelines,
            once=self._once,
            events=self.events,
            worker_id=self.worker_id,
            log=self.log,
        )

    def _listen_dsn(self) -> str | Literal[False] | None:
        """Where to LISTEN for new jobs, or False to rely on polling alone.

        ``LISTEN`` needs a session of its own: through a PgBouncer in
        transaction pooling the notifications would reach whichever client
        holds the server connection next. A pool without prepared statements
        (the PgBouncer setting) therefore listens only on an explicit
        ``listen_dsn`` (a direct connection), and polls otherwise.
        """
        opts = self.options
        if self._once:
            return False
        if opts.listen_dsn is not None:
            return opts.listen_dsn
        if not opts.prepared_statements:
            self.log.warning(
                "no listen_dsn (--listen-dsn) given for a pool without prepared statements: "
                "LISTEN cannot work through a transaction-pooling PgBouncer, so new jobs are "
                "found by polling every %.1fs; give a direct connection to pick them up "
                "in milliseconds",
                opts.poll_interval,
            )
            return False
        return self._dsn if self._given_pool is None else _pool_dsn(self._given_pool)

    async def _probe_pooler(self) -> None:
        """Stop with exit code 2 when prepared statements meet a transaction-pooling
        proxy (``kongtask.pooling``). Only behind a proxy
        (:func:`kongtask.pooling.behind_proxy`): it opens two connections of its
        own, one after the other, and closes them."""
        dsn, kwargs = self._dsn, self.options.connect_kwargs
        if await pooling.shares_sessions(lambda: connect(dsn, **kwargs)):
            raise ConfigError(pooling.problem_line())

    def _on_fetch_error(self, payload: Mapping[str, Any]) -> None:
        """A prepared statement lost to a transaction-pooling proxy the start-up probe
        missed: retrying cannot cure it, so say so in one line and stop (exit code 2)."""
        error = payload.get("error")
        if not pooling.is_pooler_error(error) or self._stopping:
            return
        assert isinstance(error, BaseException)
        self.log.error("%s", pooling.mid_run_message(error))
        self.exit_code = self.exit_code or pooling.EXIT_CODE
        self._begin_shutdown(self.options.shutdown_timeout)

    def _fetching_done(self, task: asyncio.Task[State]) -> None:
        """The fetcher ends when stopped, or drained in ``run_once`` (the pool then
        stops); anything else is a bug, and the pool stops loudly."""
        if not task.cancelled() and task.exception() is None and task.result() is State.DRAINED:
            self._begin_shutdown(self.options.shutdown_timeout)
            return
        self._background_done(task)

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

    async def _join(
        self, conn: asyncpg.Connection, heartbeat: Heartbeat
    ) -> tuple[list[int], list[str], int]:
        """Register tasks, send the first heartbeat and free dead pools' jobs, in one
        statement (two when there is something to free); returns the task ids
        and names and the backend's pid."""
        names = list(self.tasks)
        sent = asyncio.get_running_loop().time()
        rows = await conn.fetch(
            self.queries.join, *heartbeat.identity(), names, heartbeat.dead_after
        )
        found = rows[0]
        await heartbeat.joined(conn, sent, found)
        # ``on conflict ... do update`` returns a row for every name, inserted or not.
        by_name = {row["task_name"]: row["task_id"] for row in rows}
        return [by_name[name] for name in names], names, found["backend_pid"]

    async def _register_tasks(self, conn: asyncpg.Connection) -> tuple[list[int], list[str]]:
        names = list(self.tasks)
        rows = await conn.fetch(self.queries.register_tasks, names)
        by_name = {row["identifier"]: row["id"] for row in rows}
        return [by_name[name] for name in names], names

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
        # Only where nobody else handles SIGUSR1 (an application embedding the pool
        # may use it), and never on a platform without it.
        usr1 = getattr(signal, "SIGUSR1", None)
        if usr1 is not None and signal.getsignal(usr1) is signal.SIG_DFL:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(usr1, self._dump_state)
                self._signals_installed.append(usr1)

    def _dump_state(self) -> None:
        """``SIGUSR1``: write what the pool is doing to its log (statedump.py)."""
        from .statedump import render

        dispatcher, completer = self._dispatcher, self._completer
        parts: dict[str, object] = {
            "fetcher": self._fetcher.describe() if self._fetcher is not None else "none",
            "stopping": self._stopping,
        }
        if dispatcher is not None:
            parts["jobs"] = (
                f"{len(dispatcher.running)} running {sorted(dispatcher.running)[:20]}, "
                f"{dispatcher.queued()} queued, {dispatcher.idle_slots()} idle slot(s)"
            )
        if completer is not None:
            parts["results"] = f"{completer.pending} buffered, idle={completer.idle}"
        if self._keeper is not None:
            parts["leases"] = f"pending={self._keeper.pending()}"
        self.log.warning("%s", render(self.worker_id, parts, asyncio.all_tasks()))

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
        dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.stopping = True
        if self._fetcher is not None:
            self._fetcher.stop()
        if self._cron is not None:
            await self._cron.stop()
        # A fetch in flight is allowed to finish, so the jobs it locks come back
        # to us (and are given back below) instead of staying locked for hours.
        for task in self._background:
            task.cancel()
        fetching = [self._fetch_task] if self._fetch_task is not None else []
        if fetching:
            _, late = await asyncio.wait(fetching, timeout=5)
            for task in late:
                task.cancel()
        await asyncio.gather(*fetching, *self._background, return_exceptions=True)
        check = self._unhandled_check
        if check is not None:
            # A short run (--once on an empty queue) still gets its warning.
            await asyncio.wait([check], timeout=5)
            check.cancel()  # nothing if it ended
            await asyncio.gather(check, return_exceptions=True)
        if self._listener is not None:
            await self._listener.stop()
        if dispatcher is not None:
            # Jobs fetched but never started go back first, so others can run them.
            await self._return_local_queue()
            dispatcher.release_waiters()
        if self._slots and not forceful:
            _, pending = await asyncio.wait(self._slots, timeout=timeout)
            if pending:
                self.log.warning(
                    "%d job(s) still running after %.1fs; failing them so they retry",
                    len(self.running_jobs),
                    timeout,
                )
                self._abort.set()
                for slot in pending:
                    slot.cancel()
        if self._slots:
            await asyncio.gather(*self._slots, return_exceptions=True)
        error = await self._write_back(timeout)
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

    async def _write_back(self, timeout: float) -> BaseException | None:
        """Settle leases, write buffered results, give back whatever is still held."""
        try:
            if self._keeper is not None:
                await asyncio.wait_for(self._keeper.settle_all(), timeout=max(timeout, 10.0))
                await self._keeper.close()
            if self._completer is not None:
                await asyncio.wait_for(self._completer.drain(), timeout=max(timeout, 10.0))
            if self._pool is not None:
                # Nothing runs and every result is written: whatever this worker
                # id still holds was never started, so its attempt is undone.
                await self._pool.execute(self.queries.return_orphans, self.worker_id, "{}")
                await self._pool.execute(self.queries.force_unlock_workers, [self.worker_id])
                if self._heartbeat is not None:
                    await self._pool.execute(self.queries.forget_worker, self.worker_id)
        except DB_OR_TIMEOUT_ERRORS as exc:
            self.log.error(
                "could not write final results or unlock (%s); locks of %s "
                "will be freed by the stale-lock sweep",
                exc,
                self.worker_id,
            )
            return exc
        return None

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
            except DB_OR_TIMEOUT_ERRORS:
                pool.terminate()

    async def _return_local_queue(self) -> None:
        """Unstarted jobs: leased ones are simply released by their lease's commit,
        claimed ones get their claim (and attempt) undone."""
        assert self._dispatcher is not None
        jobs = self._dispatcher.take_unstarted()
        if not jobs:
            return
        claimed = []
        for job in jobs:
            lease = job.lease
            if lease is not None and lease.open:
                lease.drop(job.id)
            else:
                claimed.append(job)
        if claimed and self._pool is not None:
            ids = [job.id for job in claimed]
            try:
                await self._pool.execute(
                    self.queries.return_jobs, dispatch.ids_literal(ids), self.worker_id
                )
            except DB_ERRORS as exc:
                self.log.error("could not return %d unstarted job(s): %s", len(ids), exc)
                return
        self.events.emit("localQueue:returnJobs", {"jobs": jobs})

    # ------------------------------------------------------------------ fence
    def _fence(self) -> None:
        """Cut off from the database for so long that other pools may free our
        jobs: stop running them before anyone can (docs/guarantees.md)."""
        if self._stopping or self._dispatcher is None or self._fetcher is None:
            return
        assert self._outcomes is not None and self._heartbeat is not None
        dispatcher = self._dispatcher
        self.log.error(
            "no heartbeat reached the database for %.0fs; other pools may free this "
            "pool's jobs after %.0fs, so its %d running job(s) are cancelled and "
            "fetching pauses until the database answers",
            self._heartbeat.dead_after - self._heartbeat.interval,
            self._heartbeat.dead_after,
            len(dispatcher.running),
        )
        for job in dispatcher.running.values():
            if not self.tasks.is_async(job.task_identifier):
                self.log.error(
                    "job %s (%s) runs a sync handler, which cannot be cancelled: it may "
                    "overlap with a run on another pool",
                    job.id,
                    job.task_identifier,
                )
        self._outcomes.cancel_message = FENCE_MESSAGE
        self._fetcher.fence()
        dispatcher.stopping = True  # jobs a fetch in flight brings are kept, not run
        dispatcher.release_waiters()
        for slot in self._slots:
            slot.cancel()

    def _lift_fence(self, declared_dead: bool) -> None:
        """The database answers again: drop what we held but never started (a
        fetch's first statement gives back whatever of it is still ours), then
        run jobs again."""
        if self._stopping or self._dispatcher is None or self._fetcher is None:
            return
        assert self._outcomes is not None
        dispatcher = self._dispatcher
        dropped = dispatcher.take_unstarted()
        self.log.warning(
            "the database answers again%s; %d unstarted job(s) dropped, resuming",
            " (this pool had been declared dead and its jobs freed)" if declared_dead else "",
            len(dropped),
        )
        self._outcomes.cancel_message = SHUTDOWN_MESSAGE
        dispatcher.stopping = False
        loop = asyncio.get_running_loop()
        self._slots = [loop.create_task(dispatcher.slot()) for _ in range(self.options.concurrency)]
        self._fetcher.lift()

    # --------------------------------------------------------------- wake-up
    def nudge(self) -> None:
        """Ask the pool to look for jobs now (idempotent)."""
        self._wakeups.nudge()

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


def _pool_dsn(pool: asyncpg.Pool) -> str | None:
    """The DSN a borrowed pool was made with, for the LISTEN connection."""
    args = getattr(pool, "_connect_args", None) or ()
    return args[0] if args else None


async def run(
    dsn_or_pool: str | asyncpg.Pool | None,
    tasks: TaskList | Mapping[str, Handler],
    **options: Any,
) -> Runner:
    """Start a worker pool and return its :class:`Runner` (already running)."""
    runner = Runner(dsn_or_pool, tasks, build_options(**options))
    await runner.start()
    return runner


async def run_once(
    dsn_or_pool: str | asyncpg.Pool | None,
    tasks: TaskList | Mapping[str, Handler],
    **options: Any,
) -> int:
    """Run every job that is runnable now, including each named queue's next job
    as the previous one finishes, and any job that becomes due meanwhile; then return."""
    runner = Runner(dsn_or_pool, tasks, build_options(**options), once=True)
    await runner.start()
    return await runner.wait()


__all__ = [
    "SHUTDOWN_MESSAGE",
    "Runner",
    "WorkerOptions",
    "format_error",
    "run",
    "run_once",
]
