"""Prove an installed kongtask wheel carries its SQL and can migrate with it.

.ci/run calls this with the python of a fresh venv holding only the wheel,
from outside the checkout, so nothing can fall back to the repository's sql/:

    /tmp/venv/bin/python ci/check_wheel_sql.py postgresql://postgres@127.0.0.1:5432/postgres

It lists the SQL files inside the installed package, checks they are the
repository's top-level sql/ byte for byte, runs the installed ``kongtask migrate``
into a throwaway schema, checks what it built, and drops the schema again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

import kongtask
from kongtask.db import quote_ident
from kongtask.migrate import KONGTASK_MIGRATIONS, LATEST_MIGRATION

ROOT = Path(__file__).resolve().parent.parent


def check_files() -> None:
    package = Path(kongtask.__file__).resolve().parent
    if package == ROOT / "kongtask":
        sys.exit(f"kongtask was imported from the checkout ({package}), not from the wheel")
    shipped = sorted((package / "sql").glob("*.sql"))
    print("wheel sql files:", *(str(path) for path in shipped), sep="\n  ")
    expected = sorted(ROOT.joinpath("sql").glob("*.sql"))
    if [path.name for path in shipped] != [path.name for path in expected]:
        sys.exit(f"the wheel's sql files differ from {ROOT / 'sql'}")
    for ours, theirs in zip(shipped, expected, strict=True):
        if ours.read_bytes() != theirs.read_bytes():
            sys.exit(f"{ours} is not the same as {theirs}")


@asynccontextmanager
async def migrated_schema(dsn: str, schema: str) -> AsyncIterator[asyncpg.Connection]:
    """Runs the installed ``kongtask migrate`` into ``schema``, checks what it recorded,
    yields a connection, and drops the schema again whatever happens."""
    # The installed console script, so the wheel's entry point is exercised too.
    command = [str(Path(sys.executable).parent / "kongtask"), "migrate", "-c", dsn, "-s", schema]
    conn = await asyncpg.connect(dsn)
    try:
        subprocess.run(command, check=True)
        quoted = quote_ident(schema)
        migrations = await conn.fetchval(f"select count(*) from {quoted}.migrations")
        track = await conn.fetchval(f"select count(*) from {quoted}._kongtask_migrations")
        if (migrations, track) != (LATEST_MIGRATION, len(KONGTASK_MIGRATIONS)):
            sys.exit(f"migrate from the wheel recorded {migrations} + {track} migrations")
        print(f"migrated {schema} from the wheel: {migrations} + {track} migrations")
        yield conn
    finally:
        await conn.execute(f"drop schema if exists {quote_ident(schema)} cascade")
        await conn.close()


async def check_migrate(dsn: str, schema: str) -> None:
    async with migrated_schema(dsn, schema):
        pass


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} SERVER_DSN")
    check_files()
    asyncio.run(check_migrate(sys.argv[1], f"kongtask_wheel_check_{os.getpid()}"))


if __name__ == "__main__":
    main()
