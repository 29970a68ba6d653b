"""Migration: idempotence, concurrency, quoting, and refusing unknown versions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

import kongtask.cli
import kongtask.migrate
from kongtask import SchemaTooNew, SchemaTooOld, WorkerUtils
from kongtask.db import quote_ident
from kongtask.errors import ConfigError
from kongtask.migrate import (
    KONGTASK_MIGRATIONS,
    LATEST_MIGRATION,
    installed_track,
    migrate,
    read_sql,
)

from .conftest import new_schema_name


async def test_migrate_is_idempotent(database_url: str, schema: str) -> None:
    async with WorkerUtils(database_url, schema=schema) as utils:
        first = await utils.migrate()
        job = await utils.add_job("kept", {"a": 1})
        second = await utils.migrate()
        assert first.installed is True
        assert second.installed is False and second.version == LATEST_MIGRATION
        assert [j.id for j in await utils.get_jobs([job.id])] == [job.id]


async def test_concurrent_migrations_install_once(database_url: str, schema: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c, schema) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sum(r.installed for r in results) == 1
    async with WorkerUtils(database_url, schema=schema) as utils:
        job = await utils.add_job("after_race")
        assert job.task_identifier == "after_race"


async def test_newer_breaking_migration_is_refused(
    database_url: str, schema: str, conn: asyncpg.Connection
) -> None:
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
        await conn.execute(
            f"insert into {quote_ident(schema)}.migrations (id, breaking) "
            "values (20, false), (21, true)"
        )
        with pytest.raises(SchemaTooNew, match="breaking migration 21") as info:
            await utils.migrate()
        assert info.value.exit_code == 57
        with pytest.raises(SchemaTooNew):
            await installed_track(conn, schema)


async def test_newer_non_breaking_migration_is_accepted(
    database_url: str, schema: str, conn: asyncpg.Connection
) -> None:
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
        await conn.execute(f"insert into {quote_ident(schema)}.migrations (id) values (20)")
        result = await utils.migrate()
        assert result.installed is False and result.version == 20


async def test_older_graphile_worker_schema_is_refused_naming_its_version(
    database_url: str, schema: str, conn: asyncpg.Connection
) -> None:
    quoted = quote_ident(schema)
    await conn.execute(f"create schema {quoted}")
    await conn.execute(
        f"create table {quoted}.migrations (id int primary key, ts timestamptz not null "
        "default now(), breaking boolean not null default false)"
    )
    await conn.execute(f"insert into {quoted}.migrations (id) select generate_series(1, 15)")
    async with WorkerUtils(database_url, schema=schema) as utils:
        with pytest.raises(SchemaTooOld, match="migration 15"):
            await utils.migrate()
    # Refusal changed nothing.
    assert await conn.fetchval(f"select max(id) from {quoted}.migrations") == 15


async def test_missing_schema_is_reported_without_migrating(
    conn: asyncpg.Connection, schema: str
) -> None:
    with pytest.raises(SchemaTooOld, match="not installed"):
        await installed_track(conn, schema)


@pytest.mark.parametrize("bad", ["", "x" * 64, "nul\x00byte"])
def test_unusable_schema_names_are_rejected(bad: str) -> None:
    with pytest.raises(ConfigError, match="schema"):
        quote_ident(bad)


def test_sql_is_read_from_the_package_copy_before_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packaged, repository = tmp_path / "kongtask" / "sql", tmp_path / "sql"
    for folder in (packaged, repository):
        folder.mkdir(parents=True)
        (folder / "schema_0_17.sql").write_text(f"-- {folder}")
    (repository / "only_here.sql").write_text("-- repository")
    monkeypatch.setattr(kongtask.migrate, "SQL_DIRS", (packaged, repository))
    assert read_sql("schema_0_17.sql") == f"-- {packaged}"
    assert read_sql("only_here.sql") == "-- repository"


def test_missing_sql_names_every_path_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folders = (tmp_path / "kongtask" / "sql", tmp_path / "sql")
    monkeypatch.setattr(kongtask.migrate, "SQL_DIRS", folders)
    with pytest.raises(FileNotFoundError) as info:
        read_sql("schema_0_17.sql")
    for folder in folders:
        assert str(folder / "schema_0_17.sql") in str(info.value)


def test_cli_reports_missing_sql_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    database_url: str,
) -> None:
    """An incomplete install is an error message and exit status 1, not an
    exception escaping main() (which would fail this test with a traceback)."""
    monkeypatch.setattr(kongtask.migrate, "SQL_DIRS", (tmp_path / "nowhere",))
    code = kongtask.cli.main(["migrate", "-c", database_url, "-s", new_schema_name()])
    assert code == 1
    assert "schema_0_17.sql' is missing" in caplog.text


def test_every_sql_file_migrate_uses_is_found() -> None:
    """From wherever this run imports kongtask: the checkout, an editable install, a wheel."""
    for filename in ("schema_0_17.sql", *KONGTASK_MIGRATIONS):
        assert "__SCHEMA__" in read_sql(filename)


async def _waiting_for_advisory_lock(observer: asyncpg.Connection, pid: int) -> None:
    """Until backend ``pid`` waits for an advisory lock (what pg_locks shows)."""
    deadline = asyncio.get_running_loop().time() + 30
    while not await observer.fetchval(
        "select exists (select 1 from pg_locks where pid = $1"
        " and locktype = 'advisory' and not granted)",
        pid,
    ):
        assert asyncio.get_running_loop().time() < deadline, "migrate never waited for the lock"
        await asyncio.sleep(0.005)


async def test_a_migration_that_waited_for_another_sees_its_install(
    database_url: str, schema: str, conn: asyncpg.Connection
) -> None:
    """The loser of a race looked before the winner committed (its catalog caches
    say "no such schema") and waited for the lock; once granted, it must find the
    schema installed rather than try to create it again."""
    winner = await asyncpg.connect(database_url)
    loser = await asyncpg.connect(database_url)
    try:
        async with winner.transaction():
            await winner.execute(
                "select pg_advisory_xact_lock(hashtext($1))", "kongtask:migrate:" + schema
            )
            losing = asyncio.ensure_future(migrate(loser, schema))
            await _waiting_for_advisory_lock(conn, loser.get_server_pid())
            won = await migrate(winner, schema)  # the lock is this session's already
        lost = await asyncio.wait_for(losing, 30)
    finally:
        await winner.close()
        await loser.close()
    assert won.installed is True
    assert lost.installed is False and lost.version == LATEST_MIGRATION
    assert lost.kongtask_version == len(KONGTASK_MIGRATIONS)
