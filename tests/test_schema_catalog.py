"""kongtask's migration must produce exactly graphile-worker 0.17.3's catalog."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from kongtask import WorkerUtils
from kongtask.migrate import BREAKING_MIGRATIONS, KONGTASK_OBJECTS, LATEST_MIGRATION

from .catalog import describe_schema
from .conftest import drop_schema

REFERENCE = Path(__file__).parent / "data" / "graphile_worker_0_17_3_schema.json"


def _reference() -> dict:
    return json.loads(REFERENCE.read_text())


def _split_kongtask_objects(description: dict) -> set[str]:
    """Remove kongtask-only objects from ``description``; return their names."""
    names: set[str] = set()
    for section, key in (
        ("relations", "name"),
        ("columns", "rel"),
        ("constraints", "rel"),
        ("indexes", "name"),
    ):
        kept = []
        for entry in description[section]:
            if entry[key].startswith("_kongtask_"):
                names.add(entry.get("name") if section != "columns" else entry["rel"])
            else:
                kept.append(entry)
        description[section] = kept
    return names


@pytest.mark.parametrize(
    "schema_name",
    ["graphile_worker", 'we"ird Schema; drop table x', "CamelCase", "ünï côdé"],
)
async def test_catalog_matches_graphile_worker(database_url: str, schema_name: str) -> None:
    await drop_schema(database_url, schema_name)
    try:
        async with WorkerUtils(database_url, schema=schema_name) as utils:
            result = await utils.migrate()
        assert result.installed and result.version == LATEST_MIGRATION
        conn = await asyncpg.connect(database_url)
        try:
            ours = await describe_schema(conn, schema_name)
            ours_migrations = [
                dict(r)
                for r in await conn.fetch(
                    f'select id, breaking from "{schema_name.replace(chr(34), chr(34) * 2)}"'
                    ".migrations order by id"
                )
            ]
        finally:
            await conn.close()
        reference = _reference()
        ours = json.loads(json.dumps(ours, sort_keys=True))
        extra = _split_kongtask_objects(ours)
        # kongtask's own objects are exactly these, and graphile-worker never touches them.
        assert extra == set(KONGTASK_OBJECTS)
        for section in ("relations", "columns", "constraints", "indexes", "functions", "sequences"):
            assert ours[section] == reference[section], section
        assert ours_migrations == reference["migrations"]
        assert [m["id"] for m in ours_migrations if m["breaking"]] == list(BREAKING_MIGRATIONS)
    finally:
        await drop_schema(database_url, schema_name)
