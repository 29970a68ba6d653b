"""Smoke test of an installed kongtask wheel: compiled twins, its SQL, one job end to end.

.ci/run calls this with the python of a fresh venv holding only the repaired
wheel, from outside the checkout (so the checkout cannot be imported):

    cd /tmp && /tmp/venv/bin/python /path/to/ci/smoke_wheel.py postgresql://…/postgres

It fails unless every ``kongtask._core`` module is the wheel's compiled one,
then makes the checks of ``check_wheel_sql.py`` (the SQL files, ``kongtask
migrate`` from the console script) and, in that throwaway schema, adds a job
and runs it with ``run_once``. With ``--no-database`` (cibuildwheel's test
command on hosted runners, which have no PostgreSQL) it stops after the files.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from check_wheel_sql import check_files, migrated_schema  # beside this file

import kongtask
from kongtask import _core
from kongtask.db import quote_ident

CORE_MODULES = ("decode", "dispatch", "payload", "schedule")


def check_compiled() -> None:
    if kongtask.IMPLEMENTATION != "cython":
        sys.exit(f"the wheel loaded the {kongtask.IMPLEMENTATION} twins, not the compiled ones")
    package = Path(kongtask.__file__).resolve().parent
    for name in CORE_MODULES:
        module = Path(getattr(_core, name).__file__).resolve()
        if module.parent != package / "_core" or module.suffix not in (".so", ".pyd"):
            sys.exit(f"kongtask._core.{name} came from {module}, not the wheel's extension")
    python = sys.version.split()[0]
    print(f"kongtask {kongtask.__version__} on Python {python}: compiled twins from {package}")


async def check_job(dsn: str, schema: str) -> None:
    ran: list[Any] = []
    tasks = kongtask.TaskList()

    @tasks.task("smoke")
    async def smoke(payload: Any, helpers: Any) -> None:
        ran.append(payload)

    async with migrated_schema(dsn, schema) as conn:
        async with kongtask.WorkerUtils(dsn, schema=schema) as utils:
            await utils.add_job("smoke", {"wheel": sys.version_info[:2]})
        await kongtask.run_once(dsn, tasks, schema=schema)
        left = await conn.fetchval(f"select count(*) from {quote_ident(schema)}.jobs")
        if ran != [{"wheel": list(sys.version_info[:2])}] or left != 0:
            sys.exit(f"run_once ran {ran!r} and left {left} job(s)")
        print("added a job and ran it with run_once")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} SERVER_DSN|--no-database")
    check_compiled()
    check_files()
    if sys.argv[1] != "--no-database":
        asyncio.run(check_job(sys.argv[1], f"kongtask_wheel_smoke_{os.getpid()}"))


if __name__ == "__main__":
    main()
