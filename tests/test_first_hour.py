"""A new user's first hour (issue 18): every mistake gets one clear line and its exit code.

Each case runs the real command line as a subprocess against the test database
and asserts the line (naming what was wrong), the documented exit code, and
that no traceback reached the user.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest

import kongtask
from kongtask import InvalidJobSpec, JobSpec, SchemaMissing, WorkerUtils
from kongtask.db import quote_ident

EXIT_USAGE = 2
EXIT_TASKS = 4

#: The ``kongtask`` console script of this interpreter: unlike ``python -m
#: kongtask`` it does not start with the current folder on ``sys.path``.
SCRIPT = Path(sys.executable).with_name("kongtask")


async def _cli(
    *args: str,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    script: bool = False,
    timeout: float = 60,
) -> tuple[int, str, str]:
    argv = [str(SCRIPT)] if script else [sys.executable, "-m", "kongtask"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def _one_error(err: str) -> str:
    """The single ERROR line the command printed; no traceback anywhere."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1, err
    return errors[0]


# ------------------------------------------------------- before `kongtask migrate`


@pytest.mark.parametrize(
    "command",
    [
        ("add", "send_email"),
        ("jobs",),
        ("retry", "1"),
        ("remove", "some-key"),
        ("unlock", "some-worker"),
    ],
)
async def test_commands_before_migrate_say_to_migrate(
    database_url: str, schema: str, command: tuple[str, ...]
) -> None:
    # `schema` is a fresh name nobody migrated: a first run, or a mistyped -s.
    code, _, err = await _cli(*command, "-c", database_url, "-s", schema)
    assert code == EXIT_USAGE, err
    line = _one_error(err)
    assert f"schema '{schema}' is not installed" in line
    assert f"kongtask migrate -s {schema}" in line


async def test_schema_without_tables_says_to_migrate(
    database_url: str, schema: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(f"create schema {quote_ident(schema)}")
    code, _, err = await _cli("jobs", "-c", database_url, "-s", schema)
    assert code == EXIT_USAGE, err
    assert f"kongtask migrate -s {schema}" in _one_error(err)


async def test_client_raises_schema_missing(database_url: str, schema: str) -> None:
    async with WorkerUtils(database_url, schema=schema) as utils:
        with pytest.raises(SchemaMissing) as info:
            await utils.add_job("t")
    assert info.value.schema == schema and "kongtask migrate" in str(info.value)


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("dsn", ["not a dsn", "postgresql://u:hunter2@127.0.0.1:port/db"])
async def test_a_dsn_that_does_not_parse_is_bad_input(dsn: str) -> None:
    code, _, err = await _cli("add", "-c", dsn, "t")
    assert code == EXIT_USAGE, err
    line = _one_error(err)
    assert "is not valid" in line and "hunter2" not in line


@pytest.mark.parametrize("command", [("add", "t"), ("migrate",), ("run", "--once")])
async def test_a_dsn_naming_a_missing_database_is_bad_input(
    database_url: str, command: tuple[str, ...], tmp_path: Path
) -> None:
    """The server is there and says the database is not: configuration (exit 2),
    not an unreachable database (exit 3), with the password still masked."""
    parts = urlsplit(database_url)
    userinfo, _, host = parts.netloc.rpartition("@")
    password = None if ":" in userinfo else "hunter2"  # trust auth: ignored by the server
    if password is not None:
        userinfo = f"{userinfo or 'postgres'}:{password}"
    dsn = urlunsplit(parts._replace(netloc=f"{userinfo}@{host}", path="/kongtask_no_such_db"))
    if command[0] == "run":
        (tmp_path / "tasks.py").write_text(TASKS)
        command = (*command, "--tasks", str(tmp_path / "tasks.py"))
    code, _, err = await _cli(command[0], "-c", dsn, *command[1:])
    assert code == EXIT_USAGE, err
    line = _one_error(err)
    assert 'database "kongtask_no_such_db" does not exist' in line and "createdb" in line
    if password is not None:
        assert password not in line


async def test_too_long_task_is_named_task(utils: WorkerUtils, database_url: str) -> None:
    code, _, err = await _cli("add", "-c", database_url, "-s", utils.schema, "t" * 200)
    assert code == EXIT_USAGE, err
    assert "task: must be at most 128 characters" in _one_error(err)


@pytest.mark.parametrize(
    "run_at", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999999"]
)
async def test_run_at_outside_finite_range_is_refused(
    utils: WorkerUtils, database_url: str, run_at: str
) -> None:
    code, _, err = await _cli(
        "add", "-c", database_url, "-s", utils.schema, "t", "--run-at", run_at
    )
    assert code == EXIT_USAGE, err
    line = _one_error(err)
    assert "run_at: " in line and "outside the times kongtask can store" in line
    assert "$4" not in line
    assert await utils.get_jobs(range(1, 100)) == []


async def test_run_at_with_trailing_z_is_utc(utils: WorkerUtils, database_url: str) -> None:
    code, out, err = await _cli(
        "add", "-c", database_url, "-s", utils.schema, "t", "--run-at", "2030-01-02T03:04:05Z"
    )
    assert code == 0, err
    assert orjson.loads(out)["run_at"] == "2030-01-02T03:04:05+00:00"


@pytest.mark.parametrize(
    "run_at",
    [
        datetime.min.replace(tzinfo=timezone.utc),  # asyncpg would send -infinity
        datetime.max,  # ... and infinity
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),  # before year 1 in UTC
    ],
)
async def test_client_refuses_run_at_postgres_cannot_store(
    utils: WorkerUtils, run_at: datetime
) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        await utils.add_job("t", run_at=run_at)
    assert info.value.field == "run_at"
    job = await utils.add_job("t")
    with pytest.raises(InvalidJobSpec) as info:
        await utils.reschedule_jobs([job.id], run_at=run_at)
    assert info.value.field == "run_at"
    [unchanged] = await utils.get_jobs([job.id])
    assert unchanged.run_at == job.run_at


async def test_add_jobs_refuses_run_at_before_year_one_in_utc(utils: WorkerUtils) -> None:
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(InvalidJobSpec) as info:
        await utils.add_jobs([JobSpec("t"), JobSpec("t", run_at=early)])
    assert info.value.field == "specs[1].run_at"


# ------------------------------------------------------------- large payloads


async def test_payload_from_a_file_and_from_stdin(
    utils: WorkerUtils, database_url: str, tmp_path: Path
) -> None:
    big = {"blob": "x" * 10_000_000}  # 10 MB: more than an argument list may hold
    (tmp_path / "big.json").write_bytes(orjson.dumps(big))
    args = ("add", "-c", database_url, "-s", utils.schema, "t")
    code, out, err = await _cli(*args, f"@{tmp_path / 'big.json'}")
    assert code == 0, err
    from_file = orjson.loads(out)["id"]
    code, out, err = await _cli(*args, "-", stdin=orjson.dumps({"n": 1}))
    assert code == 0, err
    from_stdin = orjson.loads(out)["id"]
    jobs = {job.id: job.payload for job in await utils.get_jobs([from_file, from_stdin])}
    assert jobs == {from_file: big, from_stdin: {"n": 1}}


async def test_payload_file_missing_or_bad(
    utils: WorkerUtils, database_url: str, tmp_path: Path
) -> None:
    args = ("add", "-c", database_url, "-s", utils.schema, "t")
    code, _, err = await _cli(*args, f"@{tmp_path / 'absent.json'}")
    assert code == EXIT_USAGE, err
    assert "payload: cannot read" in _one_error(err)
    code, _, err = await _cli(*args, "-", stdin=b"{oops")
    assert code == EXIT_USAGE, err
    assert "payload: not valid JSON (stdin)" in _one_error(err)


# ------------------------------------------------------------------ task modules

TASKS = """
from kongtask import TaskList

tasks = TaskList()

@tasks.task("hello")
async def hello(payload, helpers):
    print("HELLO", payload["n"], flush=True)
"""


async def test_dotted_tasks_module_imports_from_the_current_folder(
    utils: WorkerUtils, database_url: str, tmp_path: Path
) -> None:
    assert SCRIPT.is_file(), f"the console script {SCRIPT} is not installed"
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "tasks.py").write_text(TASKS)
    await utils.add_job("hello", {"n": 1})
    code, out, err = await _cli(
        "run", "-c", database_url, "-s", utils.schema, "--once", "--tasks", "myapp.tasks",
        cwd=tmp_path, script=True,
    )  # fmt: skip
    assert code == 0, err
    assert "HELLO 1" in out


async def test_tasks_py_is_the_default(
    utils: WorkerUtils, database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "tasks.py").write_text(TASKS)
    await utils.add_job("hello", {"n": 2})
    code, out, err = await _cli(
        "run", "-c", database_url, "-s", utils.schema, "--once", cwd=tmp_path, script=True
    )
    assert code == 0, err
    assert "HELLO 2" in out


async def test_no_tasks_at_all_says_where_it_looked(database_url: str, tmp_path: Path) -> None:
    code, _, err = await _cli("run", "-c", database_url, "--once", cwd=tmp_path)
    assert code == EXIT_TASKS, err
    assert "no ./tasks folder or ./tasks.py here" in _one_error(err)


async def test_failing_import_shows_file_and_line(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "deep.py").write_text("import settings\n")
    (tmp_path / "settings.py").write_text(
        "import os\n\n\ndef smtp_host():\n"
        '    return os.environ["SMTP_HOST"]\n\n\n'
        "HOST = smtp_host()\n"
    )
    assert "SMTP_HOST" not in os.environ
    code, _, err = await _cli(
        "run", "-c", database_url, "--once", "--tasks", "deep.py", cwd=tmp_path
    )
    assert code == EXIT_TASKS, err
    assert "Traceback" not in err
    assert "task file deep.py failed to import: KeyError: 'SMTP_HOST'" in err
    assert f"{tmp_path / 'settings.py'}, line 5, in smtp_host" in err
    assert 'return os.environ["SMTP_HOST"]' in err


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("./nonexist.py", "tasks './nonexist.py': no such file or folder"),
        ("nonexist", "tasks 'nonexist': no such file, folder or module"),
        ("myapp.nonexist", "tasks 'myapp.nonexist': no such file, folder or module"),
    ],
)
async def test_missing_tasks_say_so(
    database_url: str, tmp_path: Path, spec: str, said: str
) -> None:
    code, _, err = await _cli("run", "-c", database_url, "--once", "--tasks", spec, cwd=tmp_path)
    assert code == EXIT_TASKS, err
    assert said in _one_error(err)


async def test_missing_dependency_is_an_import_failure_not_a_missing_module(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "needs_dep.py").write_text("import kongtask_no_such_dependency\n")
    code, _, err = await _cli(
        "run", "-c", database_url, "--once", "--tasks", "needs_dep", cwd=tmp_path
    )
    assert code == EXIT_TASKS, err
    assert "task module 'needs_dep' failed to import: ModuleNotFoundError" in err
    assert "needs_dep.py, line 1, in <module>" in err


def test_load_tasks_api_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(kongtask.TaskLoadError, match="no such file or folder"):
        kongtask.load_tasks(str(tmp_path / "absent.py"))


# ------------------------------------------------------------------ Quick start

README = Path(__file__).resolve().parent.parent / "README.md"
QUICK_START_DSN = '"postgresql://postgres@127.0.0.1/app"'


def quick_start_program() -> str:
    """The README's Quick start program, exactly as written there."""
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```\n", start)]


async def _read_until(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> None:
    while True:
        line = (await stream.readline()).decode()
        if not line:
            raise AssertionError(f"exited before printing {needle!r}:\n" + "".join(seen))
        seen.append(line)
        if needle in line:
            return


async def test_quick_start_logs_and_stops_cleanly_on_ctrl_c(
    database_url: str, schema: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    program = quick_start_program()
    assert program.count(QUICK_START_DSN) == 1
    # The test database instead of `app`; the schema from KONGTASK_SCHEMA, as a user's would.
    (tmp_path / "quick_start.py").write_text(program.replace(QUICK_START_DSN, repr(database_url)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(tmp_path / "quick_start.py"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KONGTASK_SCHEMA": schema},
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        await asyncio.wait_for(_read_until(proc.stderr, " ready: ", seen), 60)
        await asyncio.wait_for(_read_until(proc.stderr, "sending to a@b.c", seen), 60)
        workers = f"select count(*) from {quote_ident(schema)}._kongtask_workers"
        assert await conn.fetchval(workers) == 1
        proc.send_signal(signal.SIGINT)
        _, rest = await asyncio.wait_for(proc.communicate(), 60)
        seen.append(rest.decode())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = "".join(seen)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "received SIGINT" in err
    assert await conn.fetchval(workers) == 0  # its worker row went with it
    locked = f"select count(*) from {quote_ident(schema)}._private_jobs where locked_by is not null"
    assert await conn.fetchval(locked) == 0


def test_readme_crontab_example_needs_no_extra_package() -> None:
    """The README's crontab parses with what its install line installs (no json5)."""
    text = README.read_text()
    section = text[text.index("## Cron") :]
    start = section.index("```\n") + len("```\n")
    crontab = section[start : section.index("```\n", start)]
    code = (
        "import sys; sys.modules['json5'] = None\n"
        "import kongtask\n"
        "items = kongtask.parse_crontab(sys.stdin.read())\n"
        "print(sorted(item.task for item in items))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=crontab, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['refresh_cache', 'send_report']"


@pytest.mark.parametrize(
    ("version", "said"),
    [
        ((3, 12, 0, "final", 0), "pip install 'kongtask[embedded]'"),
        ((3, 13, 0, "final", 0), "has no build for Python 3.13"),
    ],
)
def test_no_database_and_no_embedded_server_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, version: tuple[int, ...], said: str
) -> None:
    """On 3.13 `[embedded]` installs nothing, so telling the user to install it is wrong."""
    from collections import namedtuple

    from kongtask import embedded

    VersionInfo = namedtuple("VersionInfo", "major minor micro releaselevel serial")
    monkeypatch.setitem(sys.modules, "pgserver", None)  # import fails: not installed
    monkeypatch.setattr(embedded.sys, "version_info", VersionInfo(*version))
    with pytest.raises(kongtask.ConfigError, match="no database configured") as info:
        embedded.embedded_dsn()
    assert said in str(info.value)
