"""Where a pool listens for new jobs: the pool's own DSN, a separate direct one
(``listen_dsn``, for a PgBouncer in transaction pooling), or nowhere (polling)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import kongtask
from kongtask import WorkerUtils

from .test_worker import Recorder

#: Long enough that a job picked up within it was woken by a notification.
SLOW_POLL = 60.0


async def _pickup(database_url: str, utils: WorkerUtils, **options: Any) -> Recorder:
    """Start a pool, add a job once it listens (or not), return who ran it."""
    rec = Recorder()
    listening = asyncio.Event()

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        rec.record(payload["n"])

    events = kongtask.EventEmitter()
    events.on("pool:listen:success", lambda event: listening.set())
    runner = await kongtask.run(
        database_url,
        {"t": handler},
        schema=utils.schema,
        poll_interval=SLOW_POLL,
        events=events,
        **options,
    )
    try:
        if options.get("listen_dsn") or options.get("prepared_statements", True):
            await asyncio.wait_for(listening.wait(), 20)
        await utils.add_job("t", {"n": 1})
        await rec.wait_for(1, timeout=10)
    finally:
        await runner.stop()
    return rec


async def test_a_pool_without_prepared_statements_listens_on_its_listen_dsn(
    database_url: str, utils: WorkerUtils
) -> None:
    rec = await _pickup(database_url, utils, prepared_statements=False, listen_dsn=database_url)
    assert rec.calls == [1]


async def test_without_listen_dsn_such_a_pool_polls_and_says_so(
    database_url: str, utils: WorkerUtils, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kongtask")
    listened: list[Any] = []

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        return None

    events = kongtask.EventEmitter()
    events.on("pool:listen:connecting", listened.append)
    runner = await kongtask.run(
        database_url,
        {"t": handler},
        schema=utils.schema,
        prepared_statements=False,
        events=events,
    )
    await runner.stop()
    assert listened == []
    [warning] = [r.getMessage() for r in caplog.records if "listen_dsn" in r.getMessage()]
    assert "polling" in warning


def test_listen_dsn_is_not_shown_in_the_options_repr() -> None:
    options = kongtask.WorkerOptions(listen_dsn="postgresql://u:secret@h/db")
    assert "secret" not in repr(options)
