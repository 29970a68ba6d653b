"""The command line, run as a real subprocess against the test database."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from kongtask import JobSpec, WorkerUtils
from kongtask.db import quote_ident

from .conftest import spawn_kongtask

TASKS = """
import os
import asyncio
from kongtask import TaskList

tasks = TaskList()

@tasks.task("record")
async def record(payload, helpers):
    await helpers.with_pg_client(lambda c: c.execute(
        "insert into public.kongtask_cli_seen (schema_name, n) values ($1, $2)",
        os.environ["TEST_SCHEMA"], payload["n"]))
    if payload.get("slow"):
        print("SLOW-STARTED", flush=True)
        await asyncio.sleep(1.0)
"""


async def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    proc = await spawn_kongtask(*args, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def _run_once(
    database_url: str, schema: str, tasks: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """``kongtask run --once`` on ``schema`` with the tasks of one file."""
    return await _cli(
        "run", "-c", database_url, "-s", schema, "--once", "--tasks", str(tasks), *extra, env=env
    )


async def _seen_table(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "create table if not exists public.kongtask_cli_seen (schema_name text, n int)"
    )


async def test_add_then_run_once(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await _seen_table(conn)
    (tmp_path / "cli_tasks.py").write_text(TASKS)
    code, out, err = await _cli(
        "add",
        "-c",
        database_url,
        "-s",
        utils.schema,
        "record",
        '{"n": 7}',
        "--queue",
        "q",
        "--priority",
        "3",
    )
    assert code == 0, err
    added = orjson.loads(out.strip().splitlines()[-1])
    assert added["task"] == "record" and added["queue"] == "q"
    code, out, err = await _run_once(
        database_url, utils.schema, tmp_path / "cli_tasks.py", env={"TEST_SCHEMA": utils.schema}
    )
    assert code == 0, err
    assert await conn.fetchval(
        "select array_agg(n) from public.kongtask_cli_seen where schema_name = $1", utils.schema
    ) == [7]


async def test_bad_payload_and_missing_tasks_exit_codes(
    database_url: str, utils: WorkerUtils, tmp_path: Path
) -> None:
    code, _, err = await _cli("add", "-c", database_url, "-s", utils.schema, "t", "{nope")
    assert code == 2 and "payload" in err
    (tmp_path / "broken.py").write_text("raise RuntimeError('cannot import me')\n")
    code, _, err = await _run_once(database_url, utils.schema, tmp_path / "broken.py")
    assert code == 4 and "cannot import me" in err


async def test_newer_schema_exits_57(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        f"insert into {quote_ident(utils.schema)}.migrations (id, breaking) values (25, true)"
    )
    code, _, err = await _cli("migrate", "-c", database_url, "-s", utils.schema)
    assert code == 57 and "25" in err


async def test_password_never_printed(utils: WorkerUtils) -> None:
    secret = "hunter2-very-secret"
    code, out, err = await _cli(
        "migrate",
        "-c",
        f"postgresql://postgres:{secret}@127.0.0.1:1/nowhere",
        "-s",
        utils.schema,
        timeout=60,
    )
    assert code == 3
    assert secret not in out + err and "***" in err


async def test_sigterm_finishes_running_job_and_unlocks(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await _seen_table(conn)
    (tmp_path / "cli_tasks.py").write_text(TASKS)
    await utils.add_jobs(
        [
            JobSpec("record", {"n": 1, "slow": True}),
            *(JobSpec("record", {"n": i}, run_at=None, queue_name="later") for i in range(2, 4)),
        ]
    )
    proc = await spawn_kongtask(
        "run",
        "-c",
        database_url,
        "-s",
        utils.schema,
        "--tasks",
        str(tmp_path / "cli_tasks.py"),
        "-j",
        "1",
        env={"TEST_SCHEMA": utils.schema},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert b"SLOW-STARTED" in line
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    s = quote_ident(utils.schema)
    seen: Any = await conn.fetchval(
        "select array_agg(n order by n) from public.kongtask_cli_seen where schema_name = $1",
        utils.schema,
    )
    assert 1 in seen  # the running job finished
    assert (
        await conn.fetchval(f"select count(*) from {s}._private_jobs where locked_by is not null")
        == 0
    )
    assert (
        await conn.fetchval(
            f"select count(*) from {s}._private_job_queues where locked_by is not null"
        )
        == 0
    )


async def test_metrics_port_without_prometheus_client_says_what_to_install(
    database_url: str, utils: WorkerUtils, tmp_path: Path
) -> None:
    # A package of that name that fails to import stands in for a missing install.
    hidden = tmp_path / "hide" / "prometheus_client"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    (tmp_path / "cli_tasks.py").write_text(TASKS)
    path = os.pathsep.join(filter(None, [str(hidden.parent), os.environ.get("PYTHONPATH")]))
    code, _, err = await _run_once(
        database_url,
        utils.schema,
        tmp_path / "cli_tasks.py",
        "--metrics-port",
        "0",
        env={"PYTHONPATH": path},
    )
    assert code == 2, err
    assert "--metrics-port needs prometheus-client: pip install 'kongtask[metrics]'" in err


async def test_info_names_the_implementation() -> None:
    code, out, _ = await _cli("info")
    assert code == 0
    from kongtask import IMPLEMENTATION

    assert f"implementation: {IMPLEMENTATION}" in out


async def test_cron_check_prints_fire_times_and_locates_errors(tmp_path: Path) -> None:
    good = tmp_path / "crontab"
    good.write_text("# nightly\n0 4 * * * send_report ?fill=1d {to: 'ops'}\n")
    code, out, err = await _cli("cron", "check", str(good))
    assert code == 0, err
    assert "send_report" in out and out.count(":00") >= 5
    bad = tmp_path / "bad_crontab"
    bad.write_text("0 4 * * * ok\n61 * * * * broken\n")
    code, out, err = await _cli("cron", "check", str(bad))
    assert code == 2
    assert ":2:1" in out + err and "minute" in out + err


async def test_jobs_and_retry_commands(utils: WorkerUtils) -> None:
    job = await utils.add_job("inspect_me", queue_name="iq", max_attempts=1)
    await utils.permanently_fail_jobs([job.id], "it broke")
    code, out, err = await _cli("jobs", "-c", utils_dsn(utils), "-s", utils.schema, "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert "inspect_me" in out and "it broke" in out and isinstance(report, dict)
    code, out, err = await _cli("retry", "-c", utils_dsn(utils), "-s", utils.schema, str(job.id))
    assert code == 0, err
    [again] = await utils.get_jobs([job.id])
    assert again.attempts == 0


def utils_dsn(utils: WorkerUtils) -> str:
    dsn = utils._dsn
    assert dsn
    return dsn


def test_run_tunes_the_gc_for_a_job_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from kongtask import cli

    before = gc.get_threshold()
    try:
        cli._tune_gc()
        assert gc.get_threshold() == (cli.GC_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
        monkeypatch.setenv("KONGTASK_GC_THRESHOLD", "700")
        cli._tune_gc()
        assert gc.get_threshold()[0] == 700
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
