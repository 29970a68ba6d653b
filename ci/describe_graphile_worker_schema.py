"""Regenerate tests/data/graphile_worker_0_17_3_schema.json from the real npm package.

Run once when the compatibility target changes:

    (cd tests/interop && npm ci)
    python ci/describe_graphile_worker_schema.py postgresql://postgres@127.0.0.1/postgres

It creates a scratch database, lets graphile-worker 0.17.3 migrate it
(`graphile-worker --schema-only`), and writes the catalog description that
tests/test_schema_catalog.py compares kongtask's migration against.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from catalog import describe_schema  # noqa: E402

SCRATCH = "kongtask_gw_describe"


async def main(server_dsn: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'drop database if exists "{SCRATCH}"')
    await admin.execute(f'create database "{SCRATCH}"')
    await admin.close()
    dsn = urlunsplit(urlsplit(server_dsn)._replace(path="/" + SCRATCH))
    binary = ROOT / "tests" / "interop" / "node_modules" / ".bin" / "graphile-worker"
    subprocess.run([str(binary), "-c", dsn, "--schema-only"], check=True)
    conn = await asyncpg.connect(dsn)
    description = await describe_schema(conn, "graphile_worker")
    migrations = await conn.fetch("select id, breaking from graphile_worker.migrations order by id")
    description["migrations"] = [dict(row) for row in migrations]
    await conn.close()
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'drop database "{SCRATCH}"')
    await admin.close()
    out = ROOT / "tests" / "data" / "graphile_worker_0_17_3_schema.json"
    out.write_text(json.dumps(description, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1/postgres")
    )
