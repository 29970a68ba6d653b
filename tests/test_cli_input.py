"""Bad crontab input to ``kongtask run``, and what ``kongtask migrate`` says it did.

Real subprocesses against the test database: the assertions are on what a
user sees (one line on stderr, no traceback, the documented exit code).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import orjson
import pytest

from kongtask import CronSyntaxError
from kongtask.crontab import load_crontab
from kongtask.db import quote_ident

from .conftest import spawn_kongtask

EXIT_USAGE = 2

TASKS = """
from kongtask import TaskList

tasks = TaskList()

@tasks.task("ping")
async def ping(payload, helpers):
    pass
"""


async def _cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await spawn_kongtask(*args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


async def _run_with_crontab(database_url: str, schema: str, tmp_path: Path, crontab: str):
    tasks = tmp_path / "ping_tasks.py"
    tasks.write_text(TASKS)
    return await _cli(
        "run", "-c", database_url, "-s", schema, "--once", "--tasks", str(tasks),
        "--crontab", crontab,
    )  # fmt: skip


async def test_run_with_a_missing_crontab_says_so_in_one_line(
    database_url: str, schema: str, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-crontab")
    code, _out, err = await _run_with_crontab(database_url, schema, tmp_path, missing)
    assert code == EXIT_USAGE, err
    assert "Traceback" not in err
    assert _error_lines(err) == [
        line for line in err.splitlines() if f"--crontab: cannot read {missing}" in line
    ]
    assert len(_error_lines(err)) == 1
    assert "No such file or directory" in err


async def test_run_with_a_crontab_syntax_error_names_file_and_line(
    database_url: str, schema: str, tmp_path: Path
) -> None:
    crontab = tmp_path / "crontab"
    crontab.write_text("# nightly\n0 4 * * * ping\n0 4 * * * ping ?when=now\n")
    code, _out, err = await _run_with_crontab(database_url, schema, tmp_path, str(crontab))
    assert code == EXIT_USAGE, err
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    assert f"{crontab}:3:" in line and "unknown option 'when'" in line


async def test_run_with_an_unreadable_crontab_is_bad_input(
    database_url: str, schema: str, tmp_path: Path
) -> None:
    crontab = tmp_path / "crontab"
    crontab.write_bytes(b'0 4 * * * ping {"a": "\xff"}\n')
    code, _out, err = await _run_with_crontab(database_url, schema, tmp_path, str(crontab))
    assert code == EXIT_USAGE, err
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    assert f"--crontab: cannot read {crontab}: not UTF-8 text" in line


def test_load_crontab_errors_name_the_file(tmp_path: Path) -> None:
    crontab = tmp_path / "crontab"
    crontab.write_text("\n\n* * * * * bad task\n")
    with pytest.raises(CronSyntaxError) as info:
        load_crontab(crontab)
    assert (info.value.path, info.value.line) == (str(crontab), 3)
    assert str(info.value).startswith(f"{crontab}:3:")


def test_crontab_errors_without_a_file_keep_their_form() -> None:
    error = CronSyntaxError("expected a task", line=2, column=7)
    assert str(error) == "line 2, column 7: expected a task"
    assert str(error.in_file("ct")) == "ct:2:7: expected a task"


async def _migrate(database_url: str, schema: str, *command: str) -> dict[str, object]:
    code, out, err = await _cli(*command, "-c", database_url, "-s", schema)
    assert code == 0, err
    return orjson.loads(out.strip().splitlines()[-1])


async def test_migrate_says_what_it_did(database_url: str, schema: str) -> None:
    first = await _migrate(database_url, schema, "migrate")
    assert first["action"] == "installed"
    assert first["message"].startswith(f"installed schema {schema!r} at graphile-worker migration")
    again = await _migrate(database_url, schema, "migrate")
    assert (again["action"], again["version"]) == ("none", first["version"])
    assert again["message"].endswith(": nothing to do")
    assert "is already at graphile-worker migration" in again["message"]
    assert "installed" not in again  # the old key read as "not installed"
    only = await _migrate(database_url, schema, "run", "--schema-only")
    assert only["action"] == "none"


async def test_migrate_reports_an_upgrade_of_kongtask_s_track(
    database_url: str, schema: str
) -> None:
    await _migrate(database_url, schema, "migrate")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"delete from {quote_ident(schema)}._kongtask_migrations where id = 3")
    finally:
        await conn.close()
    upgraded = await _migrate(database_url, schema, "migrate")
    assert upgraded["action"] == "upgraded"
    assert "(1 kongtask migration(s) applied)" in upgraded["message"]
    assert (await _migrate(database_url, schema, "migrate"))["action"] == "none"
