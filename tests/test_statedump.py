"""``SIGUSR1`` makes a pool write its state and its coroutines' stacks to its log."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

import pytest

import kongtask
from kongtask import WorkerUtils
from kongtask.statedump import task_stacks

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 here")


class _Waiter(logging.Handler):
    """Sets an event when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.found = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.text in message:
            self.messages.append(message)
            self.found.set()


async def test_sigusr1_logs_the_pool_state_and_it_carries_on(
    database_url: str, utils: WorkerUtils
) -> None:
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    started = asyncio.Event()
    release = asyncio.Event()
    second_done = asyncio.Event()

    async def hold(payload: Any, helpers: kongtask.Helpers) -> None:
        started.set()
        await release.wait()
        if payload["n"] == 2:
            second_done.set()

    log = logging.getLogger("kongtask.test.statedump")
    waiter = _Waiter("state of worker")
    log.addHandler(waiter)
    runner = await kongtask.run(
        database_url, {"hold": hold}, schema=utils.schema, handle_signals=True, logger=log
    )
    try:
        # Without the pool's handler the signal's default action would end pytest.
        assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL
        job = await utils.add_job("hold", {"n": 1})
        await asyncio.wait_for(started.wait(), 20)
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(waiter.found.wait(), 20)
        report = waiter.messages[0]
        assert f"state of worker {runner.worker_id}" in report
        assert f"1 running [{job.id}]" in report
        assert "fetcher: " in report
        assert "in run" in report  # a coroutine's frame: the fetcher's loop
        release.set()
        await utils.add_job("hold", {"n": 2})
        await asyncio.wait_for(second_done.wait(), 20)  # the pool carried on after the dump
    finally:
        release.set()
        await runner.stop()
        log.removeHandler(waiter)
    # Stopping gives the signal back.
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


async def test_a_pool_leaves_an_applications_sigusr1_alone(
    database_url: str, utils: WorkerUtils
) -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:

        async def noop(payload: Any, helpers: kongtask.Helpers) -> None:
            return None

        runner = await kongtask.run(
            database_url, {"noop": noop}, schema=utils.schema, handle_signals=True
        )
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.sleep(0)  # Python runs signal handlers between bytecodes
        finally:
            await runner.stop()
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


async def test_tasks_suspended_in_one_place_are_listed_once() -> None:
    gate = asyncio.Event()

    async def waits() -> None:
        await gate.wait()

    tasks = [asyncio.create_task(waits(), name=f"same-{i}") for i in range(5)]
    other = asyncio.create_task(asyncio.sleep(30), name="other")
    await asyncio.sleep(0)
    try:
        blocks = task_stacks([*tasks, other])
    finally:
        gate.set()
        other.cancel()
        await asyncio.gather(*tasks, other, return_exceptions=True)
    assert len(blocks) == 2, blocks
    grouped = next(block for block in blocks if "5 tasks" in block)
    assert "same-0" in grouped and "same-4" in grouped and "in waits" in grouped
    assert any(block.startswith("  other:") for block in blocks)
