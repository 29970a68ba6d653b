"""The kongtask side of every scenario, run inside a child process.

This mirrors ``bench/graphile-worker/bench.js`` step for step (same task name,
same bulk-insert SQL, same ``ANALYZE``, same settings, same definition of
"ready" and of "drained"), so that the two engines differ only in the library
under test. Where kongtask measures something bench.js does not (exactly-once
checks, the time until ``runner.stop()`` returns), it is an extra key.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import asyncpg

import kongtask
from kongtask.db import quote_ident
from kongtask.record import Record

from .common import (
    EMPTY_POLL_S,
    GO,
    IDLE_WAIT_S,
    LATENCY_WARMUP,
    MEMORY_SAMPLE_S,
    READY,
    TASK,
    WINDOW,
    bulk_insert_sql,
    cpu_seconds,
    mb,
    peak_rss_bytes,
    per_job_us,
    percentile,
    rnd,
    rss_bytes,
    summarize,
)

perf = time.perf_counter
#: Key prefix (and window name) of enqueue's second window, ``add_jobs`` returning rows.
RETURNING = "returning_"
#: How often a ``work`` child reports its handled count to the harness.
WORK_REPORT_S = 0.01


class ChildConfig(Record):
    """What one child run measures; mirrors bench.js's command line.

    Not a dataclass: the child's start-up is measured (see ``kongtask.record``).
    """

    __slots__ = (  # noqa: RUF023
        "dsn",
        "schema",
        "scenario",
        "jobs",
        "samples",
        "concurrency",
        "local_queue_size",
        "poll_interval_ms",
        "analyze",
        "timeout_s",
        "idle_wait_s",
        "windows",
    )

    def __init__(
        self,
        dsn: str,
        schema: str,
        scenario: str,
        jobs: int,
        samples: int,
        concurrency: int = 24,
        local_queue_size: int | None = None,
        poll_interval_ms: int = 2000,
        analyze: bool = True,
        timeout_s: float = 900.0,
        idle_wait_s: float = IDLE_WAIT_S,
        windows: bool = False,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.scenario = scenario
        self.jobs = jobs
        self.samples = samples
        self.concurrency = concurrency
        self.local_queue_size = local_queue_size
        self.poll_interval_ms = poll_interval_ms
        self.analyze = analyze
        self.timeout_s = timeout_s
        self.idle_wait_s = idle_wait_s
        #: Hand the edges of timed windows to the harness (``WINDOW`` lines, ``GO`` on stdin).
        self.windows = windows


def progress(message: str) -> None:
    """Child progress goes to stderr; stdout carries only the result line."""
    print(f"[kt-bench] {message}", file=sys.stderr, flush=True)


async def read_stdin_line() -> str:
    """One line from the harness, without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


class CpuWindow:
    """This process's CPU over the timed window(s) of a scenario.

    With ``handshake`` on, each edge prints ``WINDOW start|end [name]`` and
    waits for ``GO`` on stdin: the harness samples PostgreSQL's CPU while this
    process stands still at the edge, instead of a few milliseconds into the
    window. The wait lies outside the window: own CPU (and the scenario's
    clock) start after the answer and stop before the end line. ``name``
    tells two windows of one scenario apart and prefixes their result keys.
    """

    def __init__(self, handshake: bool) -> None:
        self.handshake = handshake
        self._started: dict[str, float] = {}
        self._used: dict[str, float] = {}

    async def _edge(self, edge: str, name: str) -> None:
        if not self.handshake:
            return
        print(f"{WINDOW} {edge} {name}".rstrip(), flush=True)
        answer = await read_stdin_line()
        if answer.strip() != GO:
            raise RuntimeError(
                f"expected {GO} on stdin at the {edge} of a window, got {answer.strip()!r}"
            )

    async def open(self, name: str = "") -> None:
        await self._edge("start", name)
        self._started[name] = cpu_seconds()

    async def close(self, name: str = "") -> None:
        self._used[name] = cpu_seconds() - self._started.pop(name)
        await self._edge("end", name)

    def report(self, jobs: int, name: str = "") -> dict[str, float | None]:
        used = self._used[name]
        return {f"{name}cpu_s": rnd(used, 4), f"{name}cpu_us_per_job": per_job_us(used, jobs)}


class Bench:
    """One scenario of one child process."""

    def __init__(self, cfg: ChildConfig) -> None:
        self.cfg = cfg
        self.s = quote_ident(cfg.schema)
        self.jobs_table = f"{self.s}._private_jobs"
        # The handler body is swapped per scenario; the task list is fixed,
        # as in bench.js.
        self.on_job: Callable[[Any], None] = _ignore
        tasks = kongtask.TaskList()
        bench = self

        async def bench_noop(payload: Any, helpers: kongtask.Helpers) -> None:
            bench.on_job(payload)

        tasks.add(TASK, bench_noop)
        self.tasks = tasks
        self._conn: asyncpg.Connection | None = None
        self.window = CpuWindow(cfg.windows)

    # ------------------------------------------------------------ plumbing
    def pool_options(self) -> dict[str, Any]:
        """kongtask's defaults, with the bench's concurrency and poll interval (and a
        local queue size only when one was asked for)."""
        cfg = self.cfg
        options: dict[str, Any] = {
            "concurrency": cfg.concurrency,
            "poll_interval": cfg.poll_interval_ms / 1000,
            "schema": cfg.schema,
        }
        if cfg.local_queue_size is not None:
            options["local_queue_size"] = max(cfg.local_queue_size, cfg.concurrency)
        return options

    async def start_pool(self) -> tuple[kongtask.Runner, float, float]:
        """Start a pool; returns it with the perf_counter times of the call and of ready.

        kongtask's ``run()`` returns once the LISTEN is acknowledged and the
        first fetch is requested, which is bench.js's definition of ready.
        """
        t0 = perf()
        runner = await kongtask.run(self.cfg.dsn, self.tasks, **self.pool_options())
        await runner.ready.wait()
        return runner, t0, perf()

    async def conn(self) -> asyncpg.Connection:
        """The setup/verification connection (never the pool under test)."""
        if self._conn is None:
            self._conn = await asyncpg.connect(self.cfg.dsn or None)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def count_jobs(self) -> int:
        conn = await self.conn()
        return int(await conn.fetchval(f"select count(*) from {self.jobs_table}"))

    async def clear_jobs(self) -> None:
        conn = await self.conn()
        await conn.execute(f"truncate {self.jobs_table}")

    async def insert_jobs_sql(self, n: int) -> None:
        """Bulk insert entirely in PostgreSQL, exactly as bench.js does (never timed)."""
        conn = await self.conn()
        await conn.fetchval(bulk_insert_sql(self.s), TASK, n)

    async def analyze(self) -> None:
        conn = await self.conn()
        await conn.execute(f"analyze {self.jobs_table}")

    async def wait_for_empty(self, deadline: float) -> None:
        while await self.count_jobs() != 0:
            if perf() > deadline:
                raise TimeoutError("jobs table never emptied")
            await asyncio.sleep(EMPTY_POLL_S)

    def counter(self, n: int) -> _Counter:
        """Count handler calls by payload ``i`` (1..n), to prove exactly-once."""
        counter = _Counter(n, asyncio.get_running_loop().create_future())
        self.on_job = counter.hit
        return counter

    # ----------------------------------------------------------- scenarios
    async def enqueue(self) -> dict[str, Any]:
        """``add_jobs_count`` of N specs (the specs are built untimed, as in bench.js).

        Also times ``add_jobs``, which returns the rows like graphile-worker's
        ``addJobs`` does, so the comparison can be made both ways.
        """
        n = self.cfg.jobs
        await self.clear_jobs()
        specs = [kongtask.JobSpec(TASK, {"i": i}) for i in range(n)]
        async with kongtask.WorkerUtils(self.cfg.dsn, schema=self.cfg.schema) as utils:
            progress(f"add_jobs_count({n})")
            await self.window.open()
            t0 = perf()
            added = await utils.add_jobs_count(specs)
            seconds = perf() - t0
            await self.window.close()
            inserted = await self.count_jobs()
            await self.clear_jobs()
            if added != n or inserted != n:
                raise RuntimeError(
                    f"expected {n} jobs, add_jobs_count said {added}, table holds {inserted}"
                )
            progress(f"add_jobs({n}) (returning rows)")
            await self.window.open(RETURNING)
            t0 = perf()
            rows = await utils.add_jobs(specs)
            returning_seconds = perf() - t0
            await self.window.close(RETURNING)
            inserted = await self.count_jobs()
            await self.clear_jobs()
            if len(rows) != n or inserted != n:
                raise RuntimeError(
                    f"expected {n} jobs, add_jobs returned {len(rows)}, table holds {inserted}"
                )
        return {
            "scenario": "enqueue",
            "jobs": n,
            "seconds": rnd(seconds),
            "jobs_per_sec": rnd(n / seconds, 1),
            "method": "add_jobs_count",
            "returning_seconds": rnd(returning_seconds),
            "returning_jobs_per_sec": rnd(n / returning_seconds, 1),
            **self.window.report(n),
            **self.window.report(n, RETURNING),
        }

    async def _drain(self, counter: _Counter, deadline: float) -> None:
        """Until every job has started and the table is empty (bench.js's definition)."""
        await asyncio.wait_for(counter.done, timeout=max(deadline - perf(), 0.001))
        await self.wait_for_empty(deadline)

    async def drain(self) -> dict[str, Any]:
        n = self.cfg.jobs
        await self.clear_jobs()
        progress(f"inserting {n} jobs")
        await self.insert_jobs_sql(n)
        if self.cfg.analyze:
            await self.analyze()
        await self.conn()
        counter = self.counter(n)
        progress("draining")
        await self.window.open()
        deadline = perf() + self.cfg.timeout_s
        runner, t0, t_ready = await self.start_pool()
        try:
            await self._drain(counter, deadline)
            t_empty = perf()
            await self.window.close()
        finally:
            await runner.stop()
        t_stopped = perf()
        seconds = t_empty - t0
        return {
            "scenario": "drain",
            "jobs": n,
            "seconds": rnd(seconds),
            "jobs_per_sec": rnd(n / seconds, 1),
            "timed_until": "all handlers started and count(*) = 0 (polled every 5 ms), as bench.js",
            "seconds_to_stopped": rnd(t_stopped - t0),
            "stop_ms": rnd((t_stopped - t_empty) * 1000),
            "run_to_ready_ms": rnd((t_ready - t0) * 1000),
            "remaining": await self.count_jobs(),
            **counter.report(),
            **self.window.report(n),
            "concurrency": self.cfg.concurrency,
            "local_queue_size": kongtask.WorkerOptions(**self.pool_options()).max_batch,
            "analyzed": self.cfg.analyze,
        }

    async def latency(self) -> dict[str, Any]:
        total = LATENCY_WARMUP + self.cfg.samples
        await self.clear_jobs()
        loop = asyncio.get_running_loop()
        waiters: dict[int, asyncio.Future[float]] = {}

        def on_job(payload: Any) -> None:
            t1 = perf()
            waiter = waiters.get(payload.get("sample"))
            if waiter is not None and not waiter.done():
                waiter.set_result(t1)

        self.on_job = on_job
        runner, _, _ = await self.start_pool()
        lat: list[float] = []
        from_call: list[float] = []
        try:
            async with kongtask.WorkerUtils(
                self.cfg.dsn, schema=self.cfg.schema, max_pool_size=1
            ) as utils:
                for i in range(total):
                    waiter = waiters[i] = loop.create_future()
                    t_call = perf()
                    await utils.add_job(TASK, {"sample": i})
                    t0 = perf()
                    t1 = await asyncio.wait_for(waiter, timeout=30)
                    del waiters[i]
                    if i >= LATENCY_WARMUP:
                        lat.append((t1 - t0) * 1000)
                        from_call.append((t1 - t_call) * 1000)
                    if (i + 1) % 250 == 0:
                        progress(f"latency {i + 1}/{total}")
        finally:
            await runner.stop()
        return {
            "scenario": "latency",
            "samples": len(lat),
            **summarize(lat),
            "unit": "ms",
            "negative": sum(1 for x in lat if x < 0),
            "call_to_start": summarize(from_call),
        }

    async def scheduled(self) -> dict[str, Any]:
        n = self.cfg.samples
        await self.clear_jobs()
        lateness: list[float] = []
        all_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        first: list[float] = []

        def on_job(payload: Any) -> None:
            # Wall clock on both sides: PostgreSQL and this process read one host clock.
            late = time.time() * 1000 - payload["run_at_ms"]
            lateness.append(late)
            if payload["i"] == 0:
                first.append(late)
            if len(lateness) == n and not all_done.done():
                all_done.set_result(None)

        self.on_job = on_job
        runner, _, _ = await self.start_pool()
        try:
            base = round(time.time() * 1000)
            specs = []
            for i in range(n):
                run_at_ms = base + 1000 + round(2000 * i / max(1, n - 1))
                run_at = datetime.fromtimestamp(run_at_ms / 1000, tz=timezone.utc)
                specs.append(
                    kongtask.JobSpec(TASK, {"i": i, "run_at_ms": run_at_ms}, run_at=run_at)
                )
            async with kongtask.WorkerUtils(
                self.cfg.dsn, schema=self.cfg.schema, max_pool_size=1
            ) as utils:
                await utils.add_jobs(specs)
            timeout = 3 + 10 * self.cfg.poll_interval_ms / 1000 + 30
            await asyncio.wait_for(all_done, timeout=timeout)
        finally:
            await runner.stop()
        return {
            "scenario": "scheduled",
            "samples": len(lateness),
            **summarize(lateness),
            "unit": "ms",
            "poll_interval_ms": self.cfg.poll_interval_ms,
            # The first job comes after a second of idling: on a VM it pays the
            # wake-up (see the harness's round_trips), and the next few catch up.
            "first_ms": rnd(first[0]) if first else None,
        }

    async def memory(self) -> dict[str, Any]:
        n = self.cfg.jobs
        await self.clear_jobs()
        if self.cfg.analyze:
            # As bench.js: column statistics survive TRUNCATE, so gather them on
            # a throwaway batch and the drain below uses the index plan.
            progress("seeding planner statistics")
            await self.insert_jobs_sql(n)
            await self.analyze()
            await self.clear_jobs()
        runner, _, _ = await self.start_pool()
        sampler: asyncio.Task[None] | None = None
        try:
            await asyncio.sleep(self.cfg.idle_wait_s)
            idle = rss_bytes() or 0
            peak = idle

            async def sample() -> None:
                nonlocal peak
                while True:
                    await asyncio.sleep(MEMORY_SAMPLE_S)
                    peak = max(peak, rss_bytes() or 0)

            sampler = asyncio.get_running_loop().create_task(sample())
            counter = self.counter(n)
            deadline = perf() + self.cfg.timeout_s
            progress(f"inserting {n} jobs into the running pool")
            await self.window.open()
            t0 = perf()
            await self.insert_jobs_sql(n)
            await self._drain(counter, deadline)
            seconds = perf() - t0
            await self.window.close()
            sampler.cancel()
            sampler = None
            peak = max(peak, rss_bytes() or 0)
        finally:
            if sampler is not None:
                sampler.cancel()
            await runner.stop()
        return {
            "scenario": "memory",
            "jobs": n,
            "idle_rss_mb": mb(idle),
            "peak_rss_mb": mb(peak),
            "hwm_rss_mb": mb(peak_rss_bytes()),
            "seconds": rnd(seconds),
            "remaining": await self.count_jobs(),
            **counter.report(),
            **self.window.report(n),
            "analyzed": self.cfg.analyze,
        }

    async def startup(self) -> dict[str, Any]:
        await self.clear_jobs()
        runs: list[float] = []
        for _ in range(self.cfg.samples):
            runner, t0, t_ready = await self.start_pool()
            try:
                runs.append((t_ready - t0) * 1000)
            finally:
                await runner.stop()
        warm = sorted(runs[1:])
        return {
            "scenario": "startup",
            # The first run in a fresh process is the one a deployment pays.
            "run_to_ready_ms": rnd(runs[0]),
            "warm_run_to_ready_p50_ms": rnd(percentile(warm, 0.5)) if warm else None,
            "samples": len(runs),
            "ready_definition": "run() returned: schema checked, tasks registered, "
            "LISTEN jobs:insert acknowledged",
        }

    async def idle(self) -> dict[str, Any]:
        """Start, print ``READY <epoch ms>``, wait for SIGTERM/SIGINT, stop gracefully."""
        loop = asyncio.get_running_loop()
        stop_requested: asyncio.Future[str] = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _resolve, stop_requested, sig.name)
        runner, t0, t_ready = await self.start_pool()
        ready_epoch_ms = time.time() * 1000 - (perf() - t_ready) * 1000
        print(f"{READY} {round(ready_epoch_ms)}", flush=True)
        rss_at_ready = rss_bytes()
        which = await stop_requested
        t = perf()
        await runner.stop()
        return {
            "scenario": "idle",
            "run_to_ready_ms": rnd((t_ready - t0) * 1000),
            "ready_epoch_ms": round(ready_epoch_ms),
            "rss_at_ready_mb": mb(rss_at_ready),
            "signal": which,
            "shutdown_ms": rnd((perf() - t) * 1000),
        }

    async def work(self) -> dict[str, Any]:
        """One of P worker processes draining a shared queue (the ``processes`` scenario).

        Prints ``READY`` once imported and connected, starts its pool when the
        harness writes ``GO`` on stdin (so every process starts at once and
        interpreter start-up is not timed), prints ``H <handled>`` lines while
        it works (so the harness knows when to start polling for an empty
        table without loading the server with ``count(*)`` meanwhile), and
        stops when stdin says ``STOP`` or closes. Reports what it ran, with
        checksums over the payload numbers, so the harness can prove that all
        processes together ran each job exactly once.
        """
        loop = asyncio.get_running_loop()
        n = self.cfg.jobs
        seen = bytearray(n + 1)
        stats = {"handled": 0, "duplicates": 0, "sum": 0, "sum_sq": 0, "out_of_range": 0}

        def on_job(payload: Any) -> None:
            i = payload["i"]
            stats["handled"] += 1
            if not 0 < i <= n:
                stats["out_of_range"] += 1
                return
            if seen[i]:
                stats["duplicates"] += 1
            seen[i] = 1
            stats["sum"] += i
            stats["sum_sq"] += i * i

        self.on_job = on_job
        await self.conn()
        print(READY, flush=True)
        line = await read_stdin_line()
        if line.strip() != GO:
            raise RuntimeError(f"expected {GO} on stdin, got {line.strip()!r}")
        cpu0 = cpu_seconds()
        runner, t0, t_ready = await self.start_pool()
        reporter = loop.create_task(_report_progress(stats))
        try:
            await read_stdin_line()
            cpu_s = cpu_seconds() - cpu0
        finally:
            reporter.cancel()
            await runner.stop()
        return {
            "scenario": "work",
            **stats,
            "run_to_ready_ms": rnd((t_ready - t0) * 1000),
            # From GO to STOP: the harness's window, from the pool's start to an empty table.
            "cpu_s": rnd(cpu_s, 4),
        }


class _Counter:
    """Handler-call bookkeeping for a drain: calls, duplicates and missing payloads."""

    __slots__ = ("calls", "done", "duplicates", "n", "out_of_range", "seen")

    def __init__(self, n: int, done: asyncio.Future[None]) -> None:
        self.n = n
        self.seen = bytearray(n + 1)
        self.calls = 0
        self.duplicates = 0
        self.out_of_range = 0
        self.done = done

    def hit(self, payload: Any) -> None:
        i = payload["i"]
        self.calls += 1
        if 0 < i <= self.n:
            if self.seen[i]:
                self.duplicates += 1
            self.seen[i] = 1
        else:
            self.out_of_range += 1
        if self.calls == self.n and not self.done.done():
            self.done.set_result(None)

    def report(self) -> dict[str, int]:
        missing = self.n - sum(self.seen)
        return {
            "started": self.calls,
            "duplicates": self.duplicates,
            "missing": missing,
            "out_of_range": self.out_of_range,
        }


async def _report_progress(stats: dict[str, int]) -> None:
    last = -1
    while True:
        handled = stats["handled"]
        if handled != last:
            print(f"H {handled}", flush=True)
            last = handled
        await asyncio.sleep(WORK_REPORT_S)


def _ignore(payload: Any) -> None:
    return None


def _resolve(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)


SCENARIOS = ("enqueue", "drain", "latency", "scheduled", "memory", "startup", "idle", "work")


async def run_scenario(cfg: ChildConfig) -> dict[str, Any]:
    """Run one scenario and return its result (without the engine fields)."""
    if cfg.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {cfg.scenario!r}")
    bench = Bench(cfg)
    try:
        return await getattr(bench, cfg.scenario)()
    finally:
        await bench.close()
