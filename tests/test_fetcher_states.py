"""The fetcher's state machine, with each fetch's outcome scripted by the test.

A lost wake-up hangs a pool only when fetches and writes interleave in one
particular order, which a database run hits about once in a few hundred
drains. Here the fetch cycle (the one part that talks to PostgreSQL) is a
script whose fetches end when and how the test says, so every order is
produced every time. The fetcher, its mailbox and the dispatcher are the
pool's own; no database is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kongtask._core import dispatch
from kongtask.events import EventEmitter
from kongtask.fetch_cycle import Fetched
from kongtask.fetcher import Fetcher, State, Wake, Wakeups


class ScriptedCycle:
    """A fetch cycle whose fetches wait until the test ends them."""

    def __init__(self) -> None:
        self.started: asyncio.Queue[tuple[asyncio.Future[Any], dict[str, Any]]] = asyncio.Queue()

    def forget_resume(self) -> None:
        pass

    async def run(
        self, wanted: int, *, claim_queues: bool, reclaim: bool, look_ahead: bool
    ) -> Fetched:
        ending: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.started.put(
            (ending, {"wanted": wanted, "reclaim": reclaim, "claim_queues": claim_queues})
        )
        outcome = await ending
        if isinstance(outcome, BaseException):
            raise outcome
        return Fetched(outcome, False, None)


class NoWrites:
    def complete(self, job_id: int, ctid: str | None) -> None:
        raise AssertionError("no job runs in these tests")

    fail = complete


class Outcomes:
    pass


def _pool(*, once: bool, busy: Any = None) -> tuple[Fetcher, ScriptedCycle, Wakeups, Any]:
    wakeups = Wakeups()
    cycle = ScriptedCycle()
    dispatcher = dispatch.Dispatcher(
        tasks={},
        events=EventEmitter(),
        results=dispatch.Results(NoWrites()),
        outcomes=Outcomes(),
        context=type("Context", (), {"run_in_thread": None})(),
        request_fetch=wakeups.slots_hungry,
        worker_id="w",
        low_water=4,
    )
    fetcher = Fetcher(
        cycle=cycle,  # type: ignore[arg-type]
        wakeups=wakeups,
        dispatcher=dispatcher,
        busy=busy or (lambda: False),
        concurrency=4,
        max_batch=100,
        pipelines=2,
        once=once,
        events=EventEmitter(),
        worker_id="w",
        log=logging.getLogger("kongtask.test"),
    )
    return fetcher, cycle, wakeups, dispatcher


async def _next(cycle: ScriptedCycle) -> tuple[asyncio.Future[Any], dict[str, Any]]:
    return await asyncio.wait_for(cycle.started.get(), 5)


async def _settle() -> None:
    """Let the fetcher take what was posted (a few loop turns, no clock)."""
    for _ in range(5):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def _hungry_once_pool() -> AsyncIterator[
    tuple[ScriptedCycle, Wakeups, asyncio.Future[State]]
]:
    """A run_once pool whose four slots all wait for work, its fetcher running."""
    fetcher, cycle, wakeups, dispatcher = _pool(once=True)
    slots = [asyncio.ensure_future(dispatcher.slot()) for _ in range(4)]
    running = asyncio.ensure_future(fetcher.run())
    try:
        yield cycle, wakeups, running
    finally:
        dispatcher.stopping = True
        dispatcher.release_waiters()
        await asyncio.gather(*slots)
        fetcher.stop()
        await asyncio.wait_for(running, 5)


async def _end_later_fetches_empty(
    cycle: ScriptedCycle, running: asyncio.Future[State]
) -> tuple[int, State]:
    """End each further fetch with nothing until the fetcher stops; how many
    there were, and the state it stopped in (a hang fails in ``_next``)."""
    later = 0
    while not running.done():
        (await _next(cycle))[0].set_result(0)
        later += 1
        await _settle()
    return later, running.result()


async def test_a_write_during_a_fetch_is_followed_by_another_fetch() -> None:
    """A result written while a fetch is in flight (a named queue may be free
    now) cannot join it: no slot is idle. The state turns STALE, and when the
    fetch ends with jobs, another fetch follows instead of the wake-up being lost."""
    fetcher, cycle, wakeups, _ = _pool(once=False)
    running = asyncio.ensure_future(fetcher.run())
    try:
        first, _ = await _next(cycle)
        assert fetcher.state is State.FETCHING
        wakeups.results_written()
        await _settle()
        assert fetcher.state is State.STALE and cycle.started.empty()
        first.set_result(1)  # fewer than wanted: no prefetch of its own
        second, second_args = await _next(cycle)
        assert fetcher.state is State.FETCHING and second_args["claim_queues"]
        second.set_result(0)
        await _settle()
        assert fetcher.state is State.IDLE
    finally:
        fetcher.stop()
        assert await asyncio.wait_for(running, 5) is State.STOPPED


async def test_run_once_drains_only_after_the_last_fetch_in_flight() -> None:
    """An empty fetch while another is in flight cannot end run_once, even when
    the other brings jobs (they may all be run and written before it ends):
    only a later empty fetch, begun after every write, does."""
    async with _hungry_once_pool() as (cycle, wakeups, running):
        first, _ = await _next(cycle)
        second, _ = await _next(cycle)  # idle slots: a second fetch joins
        first.set_result(0)
        await _settle()
        assert not running.done()
        wakeups.results_written()  # the second fetch's job ran and was written
        second.set_result(0)
        later, state = await _end_later_fetches_empty(cycle, running)
        assert later >= 1 and state is State.DRAINED


async def test_run_once_looks_again_when_the_fetch_that_brought_jobs_ends_last() -> None:
    """A fetch hands its jobs to the slots before its last statement ends, so
    they can run and be written while it is still in flight. If the fetch that
    write started ends empty first, the one that brought the jobs ends last:
    run_once must look again then, not wait for a write that already happened
    (the hang seen in CI: an idle pool, idle slots, a fetcher waiting)."""
    async with _hungry_once_pool() as (cycle, wakeups, running):
        first, _ = await _next(cycle)
        second, _ = await _next(cycle)  # idle slots: a second fetch joins
        second.set_result(0)
        await _settle()
        wakeups.results_written()  # the first fetch's job ran and was written
        third, _ = await _next(cycle)  # the write starts a fetch beside the first
        third.set_result(0)
        await _settle()
        assert not running.done()
        first.set_result(1)  # the first fetch ends last, with its job
        later, state = await _end_later_fetches_empty(cycle, running)
        assert later >= 1 and state is State.DRAINED


async def test_run_once_waits_while_jobs_run() -> None:
    busy = [True]
    fetcher, cycle, wakeups, _ = _pool(once=True, busy=lambda: busy[0])
    running = asyncio.ensure_future(fetcher.run())
    first, _ = await _next(cycle)
    first.set_result(0)
    await _settle()
    assert fetcher.state is State.IDLE and not running.done()  # a job still runs
    busy[0] = False
    wakeups.results_written()  # its result was written
    (await _next(cycle))[0].set_result(0)
    assert await asyncio.wait_for(running, 5) is State.DRAINED


async def test_a_failed_fetch_backs_off_then_gives_back_orphans_alone() -> None:
    """After a failure the next fetch first gives back what this pool may hold
    unseen, and it must wait for the other fetch in flight: that one's claimed
    rows have not reached us yet and would be given back while we run them."""
    fetcher, cycle, wakeups, dispatcher = _pool(once=False)
    slots = [asyncio.ensure_future(dispatcher.slot()) for _ in range(4)]
    running = asyncio.ensure_future(fetcher.run())
    try:
        first, _ = await _next(cycle)
        second, _ = await _next(cycle)
        first.set_result(ConnectionResetError("connection lost"))
        await _settle()
        assert fetcher.state is State.BACKOFF
        wakeups.post(Wake.RETRY)  # the back-off is over (not waited for here)
        await _settle()
        assert cycle.started.empty()  # the other fetch is still in flight
        second.set_result(0)
        retry, retry_args = await _next(cycle)
        assert retry_args["reclaim"] and retry_args["claim_queues"]
        assert fetcher.state is State.FETCHING
        retry.set_result(0)
        await _settle()
        assert fetcher.state is State.IDLE
    finally:
        fetcher.stop()
        await asyncio.wait_for(running, 5)
        dispatcher.stopping = True
        dispatcher.release_waiters()
        await asyncio.gather(*slots)


async def test_stop_lets_fetches_in_flight_finish() -> None:
    fetcher, cycle, _, _ = _pool(once=False)
    running = asyncio.ensure_future(fetcher.run())
    first, _ = await _next(cycle)
    fetcher.stop()
    await _settle()
    assert fetcher.state is State.STOPPING and not running.done()
    first.set_result(3)  # its jobs reach the local queue, to be given back
    assert await asyncio.wait_for(running, 5) is State.STOPPED


async def test_a_bug_in_a_fetch_is_not_retried() -> None:
    fetcher, cycle, _, _ = _pool(once=False)
    running = asyncio.ensure_future(fetcher.run())
    first, _ = await _next(cycle)
    first.set_result(KeyError("a bug, not a database error"))
    with pytest.raises(KeyError):
        await asyncio.wait_for(running, 5)


async def test_moving_outside_the_table_is_refused() -> None:
    fetcher, _, _, _ = _pool(once=True)
    fetcher.state = State.DRAINED
    with pytest.raises(AssertionError, match="DRAINED -> FETCHING is not allowed"):
        fetcher._move(State.FETCHING)
