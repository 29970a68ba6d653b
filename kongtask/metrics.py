"""Prometheus metrics for a worker pool (``pip install "kongtask[metrics]"``).

Only imported when asked for, so ``prometheus-client`` stays optional.

Three kinds of numbers, each gathered where it is cheapest:

* **Per-job counters and the duration histogram** come from the runner's
  events (``job:start``, ``job:success``, ``job:error``). The listeners only
  add to plain per-task numbers (a dict lookup, a bisect, a few additions);
  a collector turns them into metrics at scrape time. prometheus-client's
  own ``Counter``/``Histogram`` would take a lock per call and ``.labels()``
  a tuple lookup, several times the cost, once per job.
* **Runner state** (slots in use, local queue, LISTEN connection) is read at
  scrape time straight from the attached runners: reading ``len()`` of a dict
  from the HTTP thread is safe under the GIL and costs nothing per job.
* **Queue contents** (available / scheduled / locked / permanently failed per
  task and queue, and how long the oldest due job has waited) need the
  database. One ``GROUP BY`` query runs every ``refresh_interval`` seconds in
  an asyncio task on the runner's loop, using the runner's pool; a scrape
  only reads the last snapshot. A scrape therefore never blocks on, or opens,
  a database connection, and scraping often costs the database nothing.

Every process reports the same queue gauges for a schema (they describe the
database, not the process): aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client import start_http_server as _start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
    from prometheus_client.utils import floatToGoString
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "kongtask metrics need prometheus-client: pip install 'kongtask[metrics]'"
    ) from exc

import asyncpg

from .db import DB_ERRORS
from .queries.inspect import queue_counts_sql

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .worker import Runner

log = logging.getLogger("kongtask.metrics")

#: Job duration buckets (seconds): from sub-millisecond no-ops to 15-minute batch jobs.
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
)
#: Fetch batch size buckets (jobs per fetch; 0 is an idle fetch).
BATCH_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

#: Queue gauge states, in the column order of :func:`kongtask.queries.inspect.queue_counts_sql`.
QUEUE_STATES = ("available", "scheduled", "locked", "failed")


class _TaskSeries:
    """Per-task counts, kept as plain numbers and turned into metrics at scrape time.

    prometheus-client's ``Counter.inc`` and ``Histogram.observe`` take a lock
    each (about 0.7 and 1 µs); a job finishing here costs a bisect and a few
    integer additions instead, which halves the metrics' share of a no-op
    job. Only the event loop's thread writes these; the HTTP thread reads
    them, and may see one job more or less, which a scrape cannot tell apart
    from timing anyway.
    """

    __slots__ = ("buckets", "duration_sum", "error", "failed", "success")

    def __init__(self) -> None:
        self.success = 0
        self.error = 0
        self.failed = 0
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.duration_sum = 0.0


class _JobCollector(Collector):
    """``kongtask_jobs_processed_total`` and ``kongtask_job_duration_seconds`` from the counts."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._bounds = [floatToGoString(b) for b in DURATION_BUCKETS] + ["+Inf"]

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        processed = CounterMetricFamily(
            "kongtask_jobs_processed",
            "Job attempts finished, by task and outcome (success; error: will retry; "
            "failed: attempts used up, will not retry)",
            labels=["task_name", "status"],
        )
        duration = HistogramMetricFamily(
            "kongtask_job_duration_seconds",
            "Handler run time per attempt, start to finish (successes and failures)",
            labels=["task_name"],
        )
        for task, series in list(self._metrics._series.items()):
            processed.add_metric([task, "success"], series.success)
            processed.add_metric([task, "error"], series.error)
            processed.add_metric([task, "failed"], series.failed)
            cumulative = list(itertools.accumulate(series.buckets))
            duration.add_metric(
                [task],
                list(zip(self._bounds, cumulative, strict=True)),
                series.duration_sum,
            )
        yield processed
        yield duration


@dataclass(slots=True)
class _QueueSnapshot:
    """The last queue-count query of one schema, swapped in whole (scrapes read it)."""

    rows: list[tuple[str, str, int, int, int, int, float | None]]
    refreshed_at: float  # time.time() of the query


class _StateCollector(Collector):
    """Yields gauges computed at scrape time from runner state and queue snapshots."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        # Declaring no descriptions keeps registration from calling collect()
        # (which would read runner state before any runner is attached).
        return []

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        runners = list(m._runners)
        busy = GaugeMetricFamily(
            "kongtask_slots_busy", "Handler slots running a job now (summed over attached pools)"
        )
        busy.add_metric([], sum(len(r.running_jobs) for r in runners))
        yield busy
        total = GaugeMetricFamily(
            "kongtask_slots", "Handler slots (the pools' concurrency, summed)"
        )
        total.add_metric([], sum(r.options.concurrency for r in runners))
        yield total
        local = GaugeMetricFamily(
            "kongtask_local_queue_jobs", "Jobs fetched and locked, waiting for a free slot"
        )
        local.add_metric([], sum(r.queued_jobs for r in runners))
        yield local
        listeners = [r._listener for r in runners if r._listener is not None]
        connected = GaugeMetricFamily(
            "kongtask_listener_connected",
            "1 when every attached pool's LISTEN connection is up, else 0",
        )
        if listeners:
            connected.add_metric([], 1.0 if all(li.connected.is_set() for li in listeners) else 0)
        yield connected

        jobs = GaugeMetricFamily(
            "kongtask_queue_jobs",
            "Jobs in the database by task, queue ('' = none) and state "
            "(available: due now; scheduled: run_at in the future; locked: being run; "
            "failed: attempts used up). Same value from every process: aggregate with max.",
            labels=["schema", "task_name", "queue", "state"],
        )
        oldest = GaugeMetricFamily(
            "kongtask_queue_oldest_due_seconds",
            "How long the oldest due, unlocked job of each task and queue has been waiting",
            labels=["schema", "task_name", "queue"],
        )
        refreshed = GaugeMetricFamily(
            "kongtask_queue_stats_refreshed_timestamp_seconds",
            "Unix time the queue gauges were last read from the database",
            labels=["schema"],
        )
        for schema, snap in list(m._snapshots.items()):
            refreshed.add_metric([schema], snap.refreshed_at)
            for task, queue, available, scheduled, locked, failed, age in snap.rows:
                for state, value in zip(
                    QUEUE_STATES, (available, scheduled, locked, failed), strict=True
                ):
                    jobs.add_metric([schema, task, queue, state], value)
                if age is not None:
                    oldest.add_metric([schema, task, queue], age)
        yield jobs
        yield oldest
        yield refreshed


class Metrics:
    """Prometheus metrics of one or more runners in this process.

    ``registry`` defaults to prometheus-client's global ``REGISTRY`` (so the
    process and platform collectors, and the application's own metrics, are
    served on the same endpoint); pass a fresh ``CollectorRegistry`` to keep
    several ``Metrics`` apart, as the tests do.

    ``refresh_interval`` is how often (seconds) the queue gauges are re-read
    from the database; ``queue_labels=False`` reports them per task only, for
    deployments that use a named queue per user or per entity, where one
    series per queue would explode Prometheus' cardinality.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        refresh_interval: float = 10.0,
        queue_labels: bool = True,
    ) -> None:
        if refresh_interval <= 0:
            raise ValueError(f"refresh_interval: must be > 0, got {refresh_interval}")
        self.registry = REGISTRY if registry is None else registry
        self.refresh_interval = refresh_interval
        self.queue_labels = queue_labels
        self.port: int | None = None
        reg = self.registry
        self.fetch_batch = Histogram(
            "kongtask_fetch_batch_size",
            "Jobs locked per fetch (0: an idle fetch found nothing due)",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.fetch_errors = Counter(
            "kongtask_fetch_errors",
            "Fetch failure episodes (counted once when fetching starts failing)",
            registry=reg,
        )
        self.fetch_empty = Counter(
            "kongtask_fetch_empty", "Fetches that found no due job", registry=reg
        )
        self.listener_connects = Counter(
            "kongtask_listener_connects",
            "LISTEN connections established (more than one: it was lost and reopened)",
            registry=reg,
        )
        self.listener_errors = Counter(
            "kongtask_listener_errors",
            "Failed attempts to reopen the LISTEN connection",
            registry=reg,
        )
        self.queue_refresh_errors = Counter(
            "kongtask_queue_stats_errors",
            "Failed reads of the queue gauges from the database",
            registry=reg,
        )
        reg.register(_JobCollector(self))
        reg.register(_StateCollector(self))
        self._series: dict[str, _TaskSeries] = {}
        # Keyed by id(job): the Job object lives in runner.running_jobs while it
        # runs, so its id() cannot be reused before job:success/job:error, and
        # two pools on different schemas may hold jobs with the same job id.
        self._started: dict[int, float] = {}
        self._runners: list[Runner] = []
        self._snapshots: dict[str, _QueueSnapshot] = {}
        self._refreshers: dict[Runner, asyncio.Task[None]] = {}
        self._subscriptions: list[tuple[Runner, str, Any]] = []
        self._httpd: WSGIServer | None = None

    # ------------------------------------------------------------- attaching
    def attach(self, runner: Runner) -> None:
        """Count this runner's jobs and report its state.

        Call it before ``runner.start()`` to see the first LISTEN connection
        too; after start works as well. The queue refresher starts with the
        pool (``pool:create``) and stops when the pool begins shutting down,
        so it never queries a closing pool.
        """
        if runner in self._runners:
            return
        self._runners.append(runner)
        subscriptions = {
            "job:start": self._on_start,
            "job:success": self._on_success,
            "job:error": self._on_error,
            "localQueue:getJobs:complete": self._on_fetched,
            "worker:getJob:empty": self._on_empty,
            "worker:getJob:error": self._on_fetch_error,
            "pool:listen:success": self._on_listen_success,
            "pool:listen:error": self._on_listen_error,
            "pool:create": lambda _payload: self._start_refresher(runner),
            "pool:gracefulShutdown": lambda _payload: self._stop_refresher(runner),
            "pool:forcefulShutdown": lambda _payload: self._stop_refresher(runner),
            "stop": lambda _payload: self.detach(runner),
        }
        for name, listener in subscriptions.items():
            runner.events.on(name, listener)
            self._subscriptions.append((runner, name, listener))
        if runner.ready.is_set() and not runner._stopping:
            self._start_refresher(runner)

    def detach(self, runner: Runner) -> None:
        """Stop following ``runner`` (done automatically when it stops)."""
        self._stop_refresher(runner)
        keep = []
        for sub in self._subscriptions:
            if sub[0] is runner:
                runner.events.off(sub[1], sub[2])
            else:
                keep.append(sub)
        self._subscriptions = keep
        if runner in self._runners:
            self._runners.remove(runner)
        if not any(r.schema == runner.schema for r in self._runners):
            self._snapshots.pop(runner.schema, None)

    # ------------------------------------------------------- event listeners
    def _on_start(self, payload: dict[str, Any]) -> None:
        self._started[id(payload["job"])] = time.perf_counter()

    def _on_success(self, payload: dict[str, Any]) -> None:
        job = payload["job"]
        series = self._series.get(job.task_identifier)
        if series is None:
            series = self._series[job.task_identifier] = _TaskSeries()
        series.success += 1
        started = self._started.pop(id(job), None)
        if started is not None:
            elapsed = time.perf_counter() - started
            series.buckets[bisect_left(DURATION_BUCKETS, elapsed)] += 1
            series.duration_sum += elapsed

    def _on_error(self, payload: dict[str, Any]) -> None:
        # job:failed always follows job:error for a final failure; deciding
        # here (the worker's own test) counts each attempt exactly once, so
        # the three statuses partition the attempts and sum() is meaningful.
        job = payload["job"]
        series = self._series.get(job.task_identifier)
        if series is None:
            series = self._series[job.task_identifier] = _TaskSeries()
        if job.attempts >= job.max_attempts:
            series.failed += 1
        else:
            series.error += 1
        started = self._started.pop(id(job), None)
        if started is not None:
            elapsed = time.perf_counter() - started
            series.buckets[bisect_left(DURATION_BUCKETS, elapsed)] += 1
            series.duration_sum += elapsed

    def _on_fetched(self, payload: dict[str, Any]) -> None:
        jobs = payload.get("jobs")
        self.fetch_batch.observe(len(jobs) if jobs is not None else payload.get("count", 0))

    def _on_empty(self, _payload: dict[str, Any]) -> None:
        self.fetch_empty.inc()

    def _on_fetch_error(self, _payload: dict[str, Any]) -> None:
        self.fetch_errors.inc()

    def _on_listen_success(self, _payload: dict[str, Any]) -> None:
        self.listener_connects.inc()

    def _on_listen_error(self, _payload: dict[str, Any]) -> None:
        self.listener_errors.inc()

    # ---------------------------------------------------------- queue gauges
    def _start_refresher(self, runner: Runner) -> None:
        task = self._refreshers.get(runner)
        if task is not None and not task.done():
            return
        loop = asyncio.get_running_loop()
        self._refreshers[runner] = loop.create_task(self._refresh_loop(runner))

    def _stop_refresher(self, runner: Runner) -> None:
        task = self._refreshers.pop(runner, None)
        if task is not None:
            task.cancel()

    async def _refresh_loop(self, runner: Runner) -> None:
        failing = False
        while True:
            pool = runner._pool
            if pool is not None:
                try:
                    await self.refresh_queue_stats(pool, runner.schema)
                except DB_ERRORS as exc:
                    self.queue_refresh_errors.inc()
                    if not failing:
                        log.warning("reading queue gauges failed (%s); will retry", exc)
                    failing = True
                else:
                    if failing:
                        log.warning("reading queue gauges works again")
                    failing = False
            await asyncio.sleep(self.refresh_interval)

    async def refresh_queue_stats(
        self, executor: asyncpg.Pool | asyncpg.Connection, schema: str
    ) -> None:
        """Re-read the queue gauges of ``schema`` now (the refresher calls this)."""
        rows = await executor.fetch(
            queue_counts_sql(schema, by_queue=self.queue_labels), None, None
        )
        snapshot: list[tuple[str, str, int, int, int, int, float | None]] = [
            (
                row["task_identifier"],
                row["queue_name"] or "",
                row["available"],
                row["scheduled"],
                row["locked"],
                row["failed"],
                row["oldest_due_age"],
            )
            for row in rows
        ]
        self._snapshots[schema] = _QueueSnapshot(snapshot, time.time())

    # ---------------------------------------------------------------- server
    async def start_server(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread.

        prometheus-client's WSGI server runs collectors in its own thread, so
        a slow scrape never stalls the event loop. ``port=0`` picks a free
        port; the one bound is in :attr:`port`.
        """
        if self._httpd is not None:
            raise RuntimeError(f"metrics server already running on port {self.port}")
        httpd, _thread = await asyncio.to_thread(_start_http_server, port, host, self.registry)
        self._httpd = httpd
        self.port = httpd.server_port
        log.info("serving Prometheus metrics on http://%s:%d/metrics", host, self.port)

    async def stop(self) -> None:
        """Stop serving, stop the queue refreshers and detach from every runner."""
        for runner in list(self._runners):
            self.detach(runner)
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            # shutdown() waits for serve_forever's poll loop (up to 0.5 s): off the loop.
            await asyncio.to_thread(httpd.shutdown)
            httpd.server_close()


__all__ = ["BATCH_BUCKETS", "DURATION_BUCKETS", "QUEUE_STATES", "Metrics"]
