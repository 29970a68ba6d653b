"""kongtask's migration and graphile-worker's own produce the same catalog, side by side."""

from __future__ import annotations

import asyncpg
import pytest

from kongtask import WorkerUtils
from kongtask.db import quote_ident
from kongtask.migrate import BREAKING_MIGRATIONS, LATEST_MIGRATION

from ..catalog import describe_schema
from ..conftest import drop_schema, new_schema_name
from .support import CATALOG_IDENTITY, KONGTASK_ONLY, GraphileWorker, split_kongtask_only

pytestmark = pytest.mark.interop


async def test_catalog_after_kongtask_and_graphile_worker_migrations_is_identical(
    database_url: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    """Both installs live in one database, so kongtask is compared with the
    graphile-worker actually installed here, not only with the committed
    description of it. Apart from the kongtask-only objects listed in
    ``support.KONGTASK_ONLY`` (all of them present), every section is equal,
    entry for entry and in the same order, and so are the migration rows."""
    ours, theirs = new_schema_name("kt_cat"), new_schema_name("gw_cat")
    try:
        async with WorkerUtils(database_url, schema=ours) as utils:
            assert (await utils.migrate()).installed
        await gw.migrate(theirs)
        kongtask_catalog = await describe_schema(conn, ours)
        graphile_catalog = await describe_schema(conn, theirs)
        migrations = {
            name: [
                tuple(row)
                for row in await conn.fetch(
                    f"select id, breaking from {quote_ident(name)}.migrations order by id"
                )
            ]
            for name in (ours, theirs)
        }
    finally:
        await drop_schema(database_url, ours)
        await drop_schema(database_url, theirs)

    shared, kongtask_only = split_kongtask_only(kongtask_catalog)
    for section, identity in CATALOG_IDENTITY.items():
        assert kongtask_only[section] == KONGTASK_ONLY[section], section
        assert not {identity(r) for r in graphile_catalog[section]} & KONGTASK_ONLY[section]
        assert shared[section] == graphile_catalog[section], section
    assert migrations[ours] == migrations[theirs]
    assert [row[0] for row in migrations[ours]] == list(range(1, LATEST_MIGRATION + 1))
    assert [row[0] for row in migrations[ours] if row[1]] == list(BREAKING_MIGRATIONS)
