"""``_core.dispatch`` (local queue, slot loop, lease bookkeeping), against both twins.

No database here: the dispatcher knows none. Its collaborators are the small
in-memory objects below, which record what the dispatcher asked of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import Twin


def _row(job_id: int, task: str, payload: str, attempts: int = 1) -> tuple[Any, ...]:
    return (job_id, None, task, payload, 0, 0, attempts, 3, None, 0, 0, None, 0, "w", 0, None)


def _jobs(twin: Twin, task: str, ids: range, lease: Any = None) -> list[Any]:
    jobs = twin.decode.decode_jobs([_row(i, task, f'{{"i": {i}}}') for i in ids])
    for job in jobs:
        job.lease = lease
    return jobs


class Completer:
    """Records what reaches the classic write path."""

    def __init__(self) -> None:
        self.done: list[int] = []
        self.rows: list[str | None] = []
        self.failed: list[tuple[int, str, str | None]] = []

    def complete(self, job_id: int, ctid: str | None) -> None:
        self.done.append(job_id)
        self.rows.append(ctid)

    def fail(self, job_id: int, message: str, payload_text: str | None) -> None:
        self.failed.append((job_id, message, payload_text))


class Events:
    """The two things the dispatcher reads of the pool's EventEmitter."""

    def __init__(self) -> None:
        self.listeners: dict[str, list[Any]] = {}
        self.seen: list[tuple[str, Any]] = []

    def emit(self, name: str, payload: dict[str, Any]) -> None:
        self.seen.append((name, payload["job"].id))


class Outcomes:
    """Records failures, then hands them on to the results, as the pool's does."""

    def __init__(self, results: Any) -> None:
        self.results = results
        self.failures: list[tuple[int, str | None, bool]] = []

    def failed(self, job: Any, exc: BaseException | None, cancelled: bool) -> None:
        self.failures.append((job.id, None if exc is None else str(exc), cancelled))
        self.results.fail(job, "cancelled" if cancelled else str(exc), None)

    def replaced(self, job: Any, replacement: Any) -> None:
        self.results.fail(job, replacement[1], repr(replacement[0]))

    async def batch_outcome(self, job: Any, result: list[Any]) -> Any:
        failed = [entry for entry, ok in zip(job.payload, result, strict=True) if not ok]
        return (failed, "batch") if failed else None

    @staticmethod
    async def with_timeout(call: Any, limit: float, name: str) -> Any:
        return await asyncio.wait_for(call, limit)


class Pool:
    """A dispatcher wired as the worker wires it, with recording collaborators."""

    def __init__(
        self,
        twin: Twin,
        handlers: dict[str, Callable[..., Any]],
        *,
        concurrency: int = 2,
        low_water: int = 1,
        timeouts: dict[str, float] | None = None,
        is_async: bool = True,
    ) -> None:
        self.completer = Completer()
        self.fetch_requests = 0
        self.event_log = Events()
        self.listeners = self.event_log.listeners
        self.worker_id = "w"
        self.loop = asyncio.get_running_loop()
        self.outcomes = Outcomes(twin.dispatch.Results(self.completer))

        def request_fetch() -> None:
            self.fetch_requests += 1

        timeouts = timeouts or {}
        self.dispatcher = twin.dispatch.Dispatcher(
            tasks={
                name: twin.dispatch.TaskEntry(handler, is_async, timeouts.get(name))
                for name, handler in handlers.items()
            },
            events=self.event_log,
            results=self.outcomes.results,
            outcomes=self.outcomes,
            context=self,
            request_fetch=request_fetch,
            worker_id="w",
            low_water=low_water,
        )
        self.slots = [self.loop.create_task(self.dispatcher.slot()) for _ in range(concurrency)]

    @property
    def failures(self) -> list[tuple[int, str | None, bool]]:
        return self.outcomes.failures

    @property
    def events(self) -> list[tuple[str, Any]]:
        return self.event_log.seen

    def run_in_thread(self, handler: Any, payload: Any, helpers: Any) -> Any:
        """HelperContext's part: sync handlers run in the loop's thread pool."""
        return self.loop.run_in_executor(None, handler, payload, helpers)

    def job_logger(self, job: Any) -> Any:
        """HelperContext's part: what ``helpers.logger`` returns (built once per job)."""
        return ("logger", job.id)

    async def stop(self) -> None:
        self.dispatcher.stopping = True
        self.dispatcher.release_waiters()
        await asyncio.wait_for(asyncio.gather(*self.slots), 10)


async def _until(predicate: Callable[[], bool]) -> None:
    """Let the loop turn until ``predicate`` holds (slots finish within a few turns)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def test_runs_jobs_in_order_and_routes_successes_to_the_completer(twin: Twin) -> None:
    seen: list[int] = []

    async def handler(payload: Any, helpers: Any) -> None:
        seen.append(payload["i"])
        assert helpers.job.id == payload["i"] and helpers.worker_id == "w"

    pool = Pool(twin, {"t": handler}, concurrency=1)
    pool.dispatcher.deliver(_jobs(twin, "t", range(1, 41)))
    await _until(lambda: len(pool.completer.done) == 40)
    assert seen == list(range(1, 41))
    assert pool.completer.done == list(range(1, 41))
    assert pool.dispatcher.started == 40 and pool.dispatcher.running == {}
    await pool.stop()


async def test_lease_takes_outcomes_while_open_and_settles_once(twin: Twin) -> None:
    settled: list[Any] = []

    async def handler(payload: Any, helpers: Any) -> None:
        if payload["i"] == 2:
            raise ValueError("two")

    lease = twin.dispatch.Lease([], settled.append)
    jobs = _jobs(twin, "t", range(1, 4), lease)
    lease.jobs = jobs
    lease.unfinished = len(jobs)
    pool = Pool(twin, {"t": handler})
    pool.dispatcher.deliver(jobs)
    await _until(lambda: bool(settled))
    assert settled == [lease]
    assert sorted(lease.done) == [1, 3]
    assert lease.failed == [(2, "two", None)]
    assert lease.unfinished == 0 and lease.unfinished_ids() == []
    assert pool.completer.done == [] and pool.completer.failed == []
    await pool.stop()


async def test_closed_lease_sends_outcomes_to_the_completer(twin: Twin) -> None:
    lease = twin.dispatch.Lease([], lambda lease: pytest.fail("a closed lease never settles"))
    jobs = _jobs(twin, "t", range(1, 3), lease)
    lease.jobs = jobs
    lease.unfinished = 2
    lease.open = False  # settling began: these jobs were claimed the classic way

    async def handler(payload: Any, helpers: Any) -> None:
        if payload["i"] == 2:
            raise ValueError("boom")

    pool = Pool(twin, {"t": handler})
    pool.dispatcher.deliver(jobs)
    await _until(lambda: len(pool.completer.done) + len(pool.completer.failed) == 2)
    assert pool.completer.done == [1]
    assert pool.completer.failed == [(2, "boom", None)]
    assert lease.done == [] and lease.failed == []
    await pool.stop()


def test_lease_unfinished_ids_and_drop(twin: Twin) -> None:
    finished: list[Any] = []
    lease = twin.dispatch.Lease([], finished.append)
    lease.jobs = _jobs(twin, "t", range(10, 14), lease)
    lease.unfinished = 4
    lease.succeeded(10)
    lease.failed_with(11, "m", '{"x":1}')
    assert lease.unfinished_ids() == [12, 13]
    lease.drop(12)
    assert lease.unfinished_ids() == [13] and finished == []
    lease.succeeded(13)
    assert finished == [lease] and lease.dropped == [12]


async def test_idle_slots_ask_for_a_fetch_and_get_delivered_jobs_first(twin: Twin) -> None:
    seen: list[int] = []

    async def handler(payload: Any, helpers: Any) -> None:
        seen.append(payload["i"])

    pool = Pool(twin, {"t": handler}, concurrency=3)
    await _until(lambda: pool.dispatcher.idle_slots() == 3)
    assert pool.fetch_requests == 3
    pool.dispatcher.deliver(_jobs(twin, "t", range(1, 6)))
    # Three went straight to the waiting slots, two wait in the local queue.
    assert pool.dispatcher.queued() == 2
    assert [job.id for job in pool.dispatcher.local] == [4, 5]
    await _until(lambda: len(seen) == 5)
    assert sorted(seen) == [1, 2, 3, 4, 5]
    await pool.stop()


async def test_low_water_asks_for_a_fetch_only_when_more_is_due(twin: Twin) -> None:
    release = asyncio.Event()

    async def handler(payload: Any, helpers: Any) -> None:
        await release.wait()

    pool = Pool(twin, {"t": handler}, concurrency=1, low_water=3)
    await _until(lambda: pool.dispatcher.idle_slots() == 1)
    before = pool.fetch_requests
    pool.dispatcher.deliver(_jobs(twin, "t", range(1, 10)))  # one runs, eight queued
    release.set()
    idle = lambda: pool.dispatcher.queued() == 0 and pool.dispatcher.idle_slots() == 1  # noqa: E731
    await _until(idle)
    # The last fetch was short (nothing more due): only finding the queue empty asked.
    assert pool.fetch_requests == before + 1
    pool.dispatcher.more = True
    pool.dispatcher.deliver(_jobs(twin, "t", range(10, 20)))
    await _until(lambda: pool.dispatcher.queued() == 0 and pool.completer.done[-1:] == [19])
    await _until(idle)
    # Crossing the low-water mark asked once; finding the queue empty asked again.
    assert pool.fetch_requests == before + 3
    await pool.stop()


async def test_take_unstarted_empties_the_local_queue(twin: Twin) -> None:
    release = asyncio.Event()

    async def handler(payload: Any, helpers: Any) -> None:
        await release.wait()

    pool = Pool(twin, {"t": handler}, concurrency=1)
    await _until(lambda: pool.dispatcher.idle_slots() == 1)
    pool.dispatcher.deliver(_jobs(twin, "t", range(1, 5)))
    await _until(lambda: list(pool.dispatcher.running) == [1])
    taken = pool.dispatcher.take_unstarted()
    assert [job.id for job in taken] == [2, 3, 4] and pool.dispatcher.queued() == 0
    release.set()
    await _until(lambda: pool.completer.done == [1])
    await pool.stop()


async def test_cancelled_slot_fails_its_job_as_cancelled(twin: Twin) -> None:
    started = asyncio.Event()

    async def handler(payload: Any, helpers: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    pool = Pool(twin, {"t": handler}, concurrency=1)
    pool.dispatcher.deliver(_jobs(twin, "t", range(7, 8)))
    await asyncio.wait_for(started.wait(), 5)
    pool.slots[0].cancel()
    await asyncio.gather(*pool.slots, return_exceptions=True)
    assert pool.failures == [(7, None, True)]
    assert pool.completer.failed == [(7, "cancelled", None)]
    assert pool.dispatcher.running == {}


async def test_bad_payload_fails_without_calling_the_handler(twin: Twin) -> None:
    async def handler(payload: Any, helpers: Any) -> None:
        pytest.fail("a job whose payload failed to decode must not run")

    pool = Pool(twin, {"t": handler}, concurrency=1)
    pool.dispatcher.deliver(twin.decode.decode_jobs([_row(1, "t", "{not json")]))
    await _until(lambda: bool(pool.failures))
    assert pool.failures[0][0] == 1 and "not valid JSON" in (pool.failures[0][1] or "")
    await pool.stop()


async def test_sync_handlers_timeouts_and_batch_results(twin: Twin) -> None:
    def sync_handler(payload: Any, helpers: Any) -> str:
        return "ran in a thread"

    async def slow(payload: Any, helpers: Any) -> None:
        await asyncio.sleep(10)

    async def batch(payload: Any, helpers: Any) -> list[bool]:
        return [entry % 2 == 0 for entry in payload]

    sync_pool = Pool(twin, {"s": sync_handler}, concurrency=1, is_async=False)
    sync_pool.dispatcher.deliver(_jobs(twin, "s", range(1, 3)))
    await asyncio.wait_for(_until_async(lambda: sync_pool.completer.done == [1, 2]), 10)
    await sync_pool.stop()

    pool = Pool(twin, {"slow": slow, "batch": batch}, concurrency=2, timeouts={"slow": 0.01})
    pool.dispatcher.deliver(_jobs(twin, "slow", range(1, 2)))
    pool.dispatcher.deliver(twin.decode.decode_jobs([_row(2, "batch", "[1, 2, 3, 4]")]))
    await asyncio.wait_for(_until_async(lambda: len(pool.completer.failed) == 2), 10)
    by_id = {entry[0]: entry for entry in pool.completer.failed}
    assert pool.failures[0][0] == 1  # the timeout reached on_failure
    assert by_id[2] == (2, "batch", "[1, 3]")
    await pool.stop()


async def _until_async(predicate: Callable[[], bool]) -> None:
    """For outcomes that need real time (threads, timers): await short loop turns."""
    while not predicate():
        await asyncio.sleep(0.001)


async def test_events_are_emitted_only_when_listened(twin: Twin) -> None:
    async def handler(payload: Any, helpers: Any) -> None:
        return None

    pool = Pool(twin, {"t": handler}, concurrency=1)
    pool.dispatcher.deliver(_jobs(twin, "t", range(1, 2)))
    await _until(lambda: pool.completer.done == [1])
    assert pool.events == []
    pool.listeners["job:start"] = [print]
    pool.listeners["job:success"] = [print]
    pool.dispatcher.deliver(_jobs(twin, "t", range(2, 3)))
    await _until(lambda: pool.completer.done == [1, 2])
    assert pool.events == [("job:start", 2), ("job:success", 2)]
    await pool.stop()


async def test_helpers_hold_their_job_and_build_the_logger_once(twin: Twin) -> None:
    kept: list[Any] = []

    async def handler(payload: Any, helpers: Any) -> None:
        assert helpers.logger is helpers.logger == ("logger", helpers.job.id)
        kept.append(helpers)

    pool = Pool(twin, {"t": handler}, concurrency=1)
    pool.dispatcher.deliver(_jobs(twin, "t", range(1, 3)))
    await _until(lambda: len(pool.completer.done) == 2)
    assert [h.job.id for h in kept] == [1, 2] and kept[0] is not kept[1]
    assert isinstance(kept[0], twin.dispatch.Helpers)
    await pool.stop()


def test_timestamps_stay_raw_until_read(twin: Twin) -> None:
    [job] = twin.decode.decode_jobs([_row(1, "t", "{}")])
    as_dict = job.as_dict()
    assert as_dict["run_at"] == twin.decode.pg_timestamp(0)
    assert job.run_at.isoformat() == "2000-01-01T00:00:00+00:00"
    assert job.locked_at is job.locked_at  # converted once, then kept


def test_decode_leased_fills_in_what_the_worker_knows(twin: Twin) -> None:
    lease = twin.dispatch.Lease([], lambda lease: None)
    row = (5, 2, '{"a": 1}', 3, 0, 1, 25, None, 0, 0, 0, '{"f": true}', "(0,1)")
    [job] = twin.decode.decode_leased([row], lease, {2: "email"}, "worker-1", 1_000_000)
    assert (job.id, job.task_identifier, job.payload, job.priority) == (5, "email", {"a": 1}, 3)
    assert (job.queue_name, job.key, job.locked_by, job.lease) == (None, None, "worker-1", lease)
    assert job.locked_at == twin.decode.pg_timestamp(1_000_000)
    assert job.flags == ["f"] and job.payload_error is None
    # A null created_at / updated_at means "same as run_at" / "same as created_at".
    row = (6, 2, "{}", 0, 7, 1, 25, None, None, None, 0, None, "(0,2)")
    [job] = twin.decode.decode_leased([row], lease, {2: "email"}, "w", 0)
    assert job.created_at == job.updated_at == job.run_at == twin.decode.pg_timestamp(7)
    with pytest.raises(ValueError, match="row 0 is not a leased row of 13 columns"):
        twin.decode.decode_leased([row[:12]], lease, {2: "email"}, "w", 0)


def test_decode_stored_fills_in_null_timestamps(twin: Twin) -> None:
    run_at, created_at = 1_000_000, 2_000_000
    row = (5, None, 2, "{}", 0, run_at, 0, 25, None, None, None, None, None, None, 0, None)
    [job] = twin.decode.decode_stored([row], {2: "email"}, {})
    assert job.created_at == job.updated_at == job.run_at == twin.decode.pg_timestamp(run_at)
    row = (6, 7, 2, "{}", 0, run_at, 0, 25, None, created_at, None, None, None, None, 0, None)
    [job] = twin.decode.decode_stored([row], {2: "email"}, {7: "q"})
    assert job.updated_at == job.created_at == twin.decode.pg_timestamp(created_at)
    assert job.run_at == twin.decode.pg_timestamp(run_at) and job.queue_name == "q"


def test_ids_literal(twin: Twin) -> None:
    assert twin.dispatch.ids_literal([]) == "{}"
    assert twin.dispatch.ids_literal([3, -1, 2**63 - 1]) == "{3,-1,9223372036854775807}"
    with pytest.raises(TypeError, match=r"ids\[1\] is bool, not int"):
        twin.dispatch.ids_literal([1, True])
    with pytest.raises(ValueError, match=r"ids\[0\] is out of bigint range"):
        twin.dispatch.ids_literal([2**63])


async def test_claimed_plain_jobs_are_completed_by_row_address(twin: Twin) -> None:
    """A plain job claimed at fetch (no lease) carries its row's address, which
    the completer deletes it by; a job fetched without one is completed by id."""

    async def handler(payload: Any, helpers: Any) -> None:
        return None

    rows = [(i, 2, "{}", 0, 0, 1, 25, None, None, None, 0, None, f"(0,{i})") for i in (1, 2)]
    claimed = twin.decode.decode_leased(rows, None, {2: "t"}, "w", 0)
    pool = Pool(twin, {"t": handler}, concurrency=1)
    pool.dispatcher.deliver([*claimed, *_jobs(twin, "t", range(3, 4))])
    await _until(lambda: len(pool.completer.done) == 3)
    assert list(zip(pool.completer.done, pool.completer.rows, strict=True)) == [
        (1, "(0,1)"),
        (2, "(0,2)"),
        (3, None),
    ]
    await pool.stop()


async def test_held_ids_are_the_running_and_the_queued_jobs(twin: Twin) -> None:
    release = asyncio.Event()

    async def handler(payload: Any, helpers: Any) -> None:
        await release.wait()

    pool = Pool(twin, {"t": handler}, concurrency=1)
    pool.dispatcher.deliver(_jobs(twin, "t", range(1, 4)))
    await _until(lambda: list(pool.dispatcher.running) == [1])
    assert pool.dispatcher.held_ids() == [1, 2, 3]
    release.set()
    await _until(lambda: len(pool.completer.done) == 3)
    assert pool.dispatcher.held_ids() == []
    await pool.stop()


async def test_queued_jobs_of_a_lost_lease_are_dropped_not_started(twin: Twin) -> None:
    """A lease whose connection is gone no longer holds its rows; another pool
    may be running its jobs already, so the ones still queued here never start."""
    release = asyncio.Event()
    seen: list[int] = []

    async def handler(payload: Any, helpers: Any) -> None:
        seen.append(payload["i"])
        await release.wait()

    settled: list[Any] = []
    lease = twin.dispatch.Lease([], settled.append)
    jobs = _jobs(twin, "t", range(1, 5), lease)
    lease.jobs = jobs
    lease.unfinished = len(jobs)
    pool = Pool(twin, {"t": handler}, concurrency=1)
    pool.dispatcher.deliver(jobs)
    await _until(lambda: seen == [1])
    lease.lost = True
    release.set()
    await _until(lambda: bool(settled))
    assert seen == [1]
    assert lease.done == [1] and lease.dropped == [2, 3, 4]
    await pool.stop()
