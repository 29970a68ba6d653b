"""The fetch loop's wake-ups, with each fetch's outcome scripted by the test.

A lost wake-up hangs a pool only when fetches and writes interleave in one
particular order, which a database run hits about once in a few hundred
drains. Here ``_fetch`` (the one method that talks to PostgreSQL) is replaced
by a fetch whose end the test decides, so that order is produced every time.
Everything else (the loop, the real dispatcher, lease keeper and completer)
is the pool's own code; no database is touched.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kongtask import WorkerOptions
from kongtask._core import dispatch
from kongtask.completion import Completer
from kongtask.events import EventEmitter
from kongtask.fetcher import Fetcher
from kongtask.leases import LeaseKeeper
from kongtask.queries import Queries


class ScriptedFetcher(Fetcher):
    """A Fetcher whose fetches wait until the test ends them with a job count."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started: asyncio.Queue[asyncio.Future[int]] = asyncio.Queue()

    async def _fetch(self, wanted: int) -> int:
        ending: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self.started.put(ending)
        return await ending


def _fetcher(*, once: bool, on_drained: Any = None) -> tuple[ScriptedFetcher, Any]:
    options = WorkerOptions(concurrency=4)
    queries = Queries("unused")
    log = logging.getLogger("kongtask.test")
    completer = Completer(
        None,
        queries,
        "w",
        delay=0,
        max_batch=10,  # type: ignore[arg-type]
        on_flushed=lambda: None,
    )
    keeper = LeaseKeeper(
        None,
        queries,
        "w",
        lease_time=1.0,  # type: ignore[arg-type]
        max_connections=2,
        completer=completer,
        on_settled=lambda: None,
        log=log,
        session_settings=False,
    )
    holder: dict[str, Any] = {}
    dispatcher = dispatch.Dispatcher(
        tasks={},
        listeners={},
        emit=lambda name, event: None,
        completer=completer,
        helper_context=None,
        run_sync=None,
        with_timeout=None,
        on_failure=None,
        batch_outcome=None,
        on_replacement=None,
        request_fetch=lambda: holder["fetcher"].request_fetch(),
        worker_id="w",
        low_water=4,
    )
    fetcher = ScriptedFetcher(
        queries=queries,
        worker_id="w",
        dispatcher=dispatcher,
        keeper=keeper,
        completer=completer,
        pool=None,
        options=options,
        events=EventEmitter(),
        log=log,
        once=once,
        on_drained=on_drained or (lambda: None),
        pipelines=2,
    )
    holder["fetcher"] = fetcher
    return fetcher, dispatcher


async def _next_fetch(fetcher: ScriptedFetcher) -> asyncio.Future[int]:
    return await asyncio.wait_for(fetcher.started.get(), 5)


async def test_write_during_a_fetch_is_followed_by_another_fetch() -> None:
    """A result written while a fetch is in flight (a named queue may be free
    now) wakes the other pipeline, which declines to join that fetch because no
    slot is idle; when the fetch ends with jobs, another fetch must follow."""
    fetcher, _ = _fetcher(once=False)
    loops = [asyncio.ensure_future(fetcher.run()) for _ in range(2)]
    try:
        fetcher.nudge()
        first = await _next_fetch(fetcher)
        fetcher.on_flushed()  # no slot is idle, so the other pipeline waits
        await asyncio.sleep(0)
        assert fetcher.started.empty()
        first.set_result(1)  # fewer than wanted: no prefetch of its own
        second = await _next_fetch(fetcher)
        second.set_result(0)
    finally:
        fetcher.stop()
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)


async def test_run_once_stops_only_after_the_last_fetch_in_flight() -> None:
    """An empty fetch while the other pipeline's fetch is in flight leaves the
    decision to that fetch even when it brings jobs (they may all be run and
    written before it ends): then one more fetch, empty, ends the run."""
    drained = asyncio.Event()
    fetcher, dispatcher = _fetcher(once=True, on_drained=drained.set)
    slots = [asyncio.ensure_future(dispatcher.slot()) for _ in range(4)]
    loops = [asyncio.ensure_future(fetcher.run()) for _ in range(2)]
    try:
        first = await _next_fetch(fetcher)  # the slots asked for work
        fetcher.nudge()  # idle slots: the second pipeline joins
        second = await _next_fetch(fetcher)
        first.set_result(0)
        await asyncio.sleep(0)
        assert not drained.is_set()  # the second fetch is still in flight
        second.set_result(1)  # its job ran and was written meanwhile
        later = 0
        while not drained.is_set():  # every later fetch finds nothing
            (await _next_fetch(fetcher)).set_result(0)
            later += 1
            await asyncio.sleep(0)
        assert later >= 1  # the run ended on an empty fetch, not on the one with a job
    finally:
        fetcher.stop()
        dispatcher.stopping = True
        dispatcher.release_waiters()
        for task in (*loops, *slots):
            task.cancel()
        await asyncio.gather(*loops, *slots, return_exceptions=True)
