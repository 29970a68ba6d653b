"""Work no worker will do: start-up warnings, and what ``kongtask jobs`` shows.

A job for a task no running worker has a handler for is accepted and waits;
so do the jobs of a crontab item naming such a task. A worker warns about
what it can know (its own handlers); ``kongtask jobs`` reports tasks whose due
jobs sit never attempted with none of them running.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

import kongtask
from kongtask import JobSpec, WorkerUtils
from kongtask.db import quote_ident
from kongtask.unhandled import MAX_LISTED

from .conftest import spawn_kongtask

TASKS = """
from kongtask import TaskList

tasks = TaskList()

@tasks.task("ping")
async def ping(payload, helpers):
    pass
"""


def _ago(minutes: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(minutes=minutes)


async def _cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await spawn_kongtask(*args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def _lock(conn: asyncpg.Connection, schema: str, job_id: int) -> None:
    """Hold a job the way a worker running it does (locked_at/locked_by)."""
    await conn.execute(
        f"update {quote_ident(schema)}._private_jobs "
        "set locked_at = now(), locked_by = 'another-worker' where id = $1",
        job_id,
    )


async def _fail_for_good(conn: asyncpg.Connection, schema: str, job_id: int) -> None:
    await conn.execute(
        f"update {quote_ident(schema)}._private_jobs set attempts = max_attempts where id = $1",
        job_id,
    )


async def test_run_warns_about_waiting_jobs_and_cron_items_it_cannot_handle(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    schema = utils.schema
    await utils.add_jobs([JobSpec("ghost", {}), JobSpec("ghost", {}), JobSpec("ping", {})])
    await utils.add_job("later_ghost", {}, run_at=datetime.now(timezone.utc) + timedelta(hours=1))
    held = await utils.add_job("held", {})
    await _lock(conn, schema, held.id)  # not waiting: a worker has it
    dead = await utils.add_job("dead", {})
    await _fail_for_good(conn, schema, dead.id)  # not waiting: no attempts left
    (tmp_path / "ping_tasks.py").write_text(TASKS)
    crontab = tmp_path / "crontab"
    crontab.write_text("0 4 * * * ping\n0 5 * * * nightly_report ?id=report\n")

    code, _out, err = await _cli(
        "run", "-c", database_url, "-s", schema, "--once",
        "--tasks", str(tmp_path / "ping_tasks.py"), "--crontab", str(crontab),
    )  # fmt: skip

    assert code == 0, err
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    (waiting,) = [line for line in warnings if "jobs are waiting" in line]
    assert waiting.endswith(
        f"jobs are waiting in schema {schema!r} for task(s) this worker has no handler for: "
        "ghost, later_ghost (they run only on a worker that has one)"
    )
    (cron,) = [line for line in warnings if "crontab item" in line]
    assert cron.endswith(
        "crontab item 'report' schedules task 'nightly_report', which this worker has no "
        "handler for (its jobs wait for a worker that has one)"
    )
    assert len(warnings) == 2
    # Nothing was lost or touched: the ghost jobs still wait untried, ping's ran.
    rows = await conn.fetch(
        f"select t.identifier, j.attempts from {quote_ident(schema)}._private_jobs as j "
        f"join {quote_ident(schema)}._private_tasks as t on t.id = j.task_id "
        "where t.identifier in ('ghost', 'ping')"
    )
    assert sorted(tuple(row) for row in rows) == [("ghost", 0), ("ghost", 0)]


async def test_no_warning_when_every_waiting_job_has_a_handler(
    database_url: str, utils: WorkerUtils, caplog: pytest.LogCaptureFixture
) -> None:
    await utils.add_job("ping", {})

    async def ping(payload: Any, helpers: kongtask.Helpers) -> None:
        pass

    with caplog.at_level(logging.WARNING, logger="kongtask"):
        await kongtask.run_once(
            database_url, {"ping": ping}, schema=utils.schema, crontab="0 4 * * * ping"
        )
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_the_warning_names_at_most_max_listed_tasks(
    database_url: str, utils: WorkerUtils, caplog: pytest.LogCaptureFixture
) -> None:
    names = [f"task_{i:02d}" for i in range(MAX_LISTED + 3)]
    await utils.add_jobs([JobSpec(name, {}) for name in names])
    with caplog.at_level(logging.WARNING, logger="kongtask"):
        await kongtask.run_once(database_url, {"ping": lambda p, h: None}, schema=utils.schema)
    (message,) = [r.getMessage() for r in caplog.records if "jobs are waiting" in r.getMessage()]
    assert ", ".join(names[:MAX_LISTED]) + ", and more (" in message
    assert names[MAX_LISTED] not in message


async def test_jobs_command_shows_tasks_no_worker_is_seen_taking(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    schema = utils.schema
    await utils.add_jobs(
        [
            JobSpec("ghost", {}, run_at=_ago(10)),  # due 10 min, never tried, none running
            JobSpec("ghost", {}, run_at=_ago(7), queue_name="q"),
            JobSpec("fresh", {}),  # due just now: not yet suspicious
            JobSpec("busy", {}, run_at=_ago(10)),  # waits, but busy is being run
            JobSpec("retrying", {}, run_at=_ago(10)),  # has been attempted
            JobSpec("future", {}, run_at=_ago(-60)),  # not due
        ]
    )
    running = await utils.add_job("busy", {})
    await _lock(conn, schema, running.id)
    await conn.execute(
        f"update {quote_ident(schema)}._private_jobs as j set attempts = 1 "
        f"from {quote_ident(schema)}._private_tasks as t "
        "where t.id = j.task_id and t.identifier = 'retrying'"
    )

    code, out, err = await _cli("jobs", "-c", database_url, "-s", schema, "--json")
    assert code == 0, err
    (ghost,) = orjson.loads(out)["unattended"]
    assert (ghost["task"], ghost["untried"]) == ("ghost", 2)
    assert ghost["oldest_untried_age"] >= 600

    code, out, err = await _cli("jobs", "-c", database_url, "-s", schema)
    assert code == 0, err
    flagged = [line for line in out.splitlines() if "no worker seen taking" in line]
    assert len(flagged) == 1
    assert flagged[0].startswith(
        "no worker seen taking task ghost: 2 due job(s) never attempted, the oldest waiting 10m"
    )

    code, out, err = await _cli("jobs", "-c", database_url, "-s", schema, "--failed", "--json")
    assert code == 0, err
    assert "unattended" not in orjson.loads(out)
